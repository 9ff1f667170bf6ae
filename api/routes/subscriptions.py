"""The subscription (one Temporal workflow per organization): start it, read it, change it (docs/api.md).
Platform and admin keys only. Each POST takes an optional Idempotency-Key (api/idempotency.py): the change runs
once, a retry gets its first answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import Response

from api.idempotency import IdempotencyKeyHeader, IdempotentPost
from api.openapi import problems
from api.routes.common import MANAGE, OrgId, managing
from api.schemas import PlanIn, SeatsIn, SubscribeIn, SubscriptionOut
from api.service import Caller, Svc
from models.errors import InvalidRequest
from models.subscription_types import Subscription

router = APIRouter(prefix="/v1/orgs/{org_id}/subscription", tags=["subscriptions"])

# A change may charge (upgrade, more seats): declined, Stripe refusing the request, or a repeat key in use.
_CHANGE = (*MANAGE, "PaymentDeclined", "PaymentProviderRefused", "IdempotencyConflict")


def _answer(call: Callable[[], Awaitable[Subscription]]) -> Callable[[], Awaitable[SubscriptionOut]]:
    """The change as api/idempotency.py runs it: only when the key is new (a replay calls nothing)."""
    async def run() -> SubscriptionOut:
        return SubscriptionOut.model_validate(await call())
    return run


@router.post("", response_model=SubscriptionOut, status_code=201, responses=problems(*_CHANGE))
async def subscribe(org_id: OrgId, body: SubscribeIn, key: Caller, svc: Svc, once: IdempotentPost,
                    idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Start the subscription: charged now (402 PaymentDeclined leaves the organization on Free), or after
    `trial_days` of trial; it renews on its own."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.subscribe(
        org_id, plan=body.plan, seats=body.seats, interval=body.interval, trial_days=body.trial_days,
        email=body.email, payment_method=body.payment_method, vat_rate=body.vat_rate)), status_code=201)


@router.get("", response_model=SubscriptionOut, responses=problems(*MANAGE))
async def subscription(org_id: OrgId, key: Caller, svc: Svc) -> SubscriptionOut:
    """The subscription now (an organization that never subscribed: 422 InvalidRequest, subscribe first; one the
    engine has never seen: 404)."""
    managing(key, org_id)
    try:
        return SubscriptionOut.model_validate(await svc.billing.subscription(org_id))
    except InvalidRequest:
        await svc.billing.balance(org_id)  # no wallet either: UnknownOrganization
        raise


@router.post("/upgrade", response_model=SubscriptionOut, responses=problems(*_CHANGE))
async def upgrade(org_id: OrgId, body: PlanIn, key: Caller, svc: Svc, once: IdempotentPost,
                  idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Move to a higher plan now, charging the difference for the rest of the period."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.upgrade(org_id, plan=body.plan)))


@router.post("/downgrade", response_model=SubscriptionOut, responses=problems(*_CHANGE))
async def downgrade(org_id: OrgId, body: PlanIn, key: Caller, svc: Svc, once: IdempotentPost,
                    idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Move to a lower plan at period end (the current plan withdraws a pending downgrade)."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.downgrade(org_id, plan=body.plan)))


@router.post("/seats", response_model=SubscriptionOut, responses=problems(*_CHANGE))
async def seats(org_id: OrgId, body: SeatsIn, key: Caller, svc: Svc, once: IdempotentPost,
                idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """More seats now (prorated charge); fewer from the next period."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.change_seats(org_id, seats=body.seats)))


@router.post("/cancel", response_model=SubscriptionOut, responses=problems(*_CHANGE))
async def cancel(org_id: OrgId, key: Caller, svc: Svc, once: IdempotentPost,
                 idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Cancel to Free at period end; service continues until then, no refund."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.cancel(org_id)))


@router.post("/resume", response_model=SubscriptionOut, responses=problems(*_CHANGE))
async def resume(org_id: OrgId, key: Caller, svc: Svc, once: IdempotentPost,
                 idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Undo a cancellation before the period ends."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.resume(org_id)))


@router.post("/retry", response_model=SubscriptionOut, responses=problems(*_CHANGE))
async def retry(org_id: OrgId, key: Caller, svc: Svc, once: IdempotentPost,
                idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Run the subscription's failed step again now instead of at its next backoff (`incident` says whether it
    failed again); at once when no step has failed."""
    managing(key, org_id)
    return await once(org_id, idempotency_key, _answer(lambda: svc.billing.retry_now(org_id)))
