"""Metering: debits, holds and their settlement, balance (docs/api.md). Each calls the same path as the
SDK: a debit through HTTP is still one database round trip (the key is authenticated from its cache). Their
Idempotency-Key is the engine's own key (a debit's key, a hold's id): a repeat answers `replayed: true`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from api.openapi import problems
from api.routes.common import ORG, OrgId
from api.schemas import BalanceOut, DebitIn, DebitOut, HoldIn, HoldOut
from api.service import Caller, Service, Svc
from models.api_types import ApiKey
from models.errors import Forbidden
from models.ledger_types import HoldResult

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["metering"])

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", examples=["msg-42"], description="the debit's "
                                       "business key: a repeat answers as the first (replayed), another request "
                                       "under it is 409")]
HoldKey = Annotated[str, Header(alias="Idempotency-Key", examples=["score-7"], description="the hold's id (its "
                                "business key): a repeat answers as the first (replayed), another request under it "
                                "is 409")]
HoldId = Annotated[str, Path(description="the Idempotency-Key the hold was made with")]

_METER = (*ORG, "Forbidden", "InsufficientCredits", "TierNotAvailable", "UserLimitExceeded", "UsageGuardPaused",
          "IdempotencyConflict")


@router.post("/debits", response_model=DebitOut, status_code=201, responses=problems(*_METER))
async def debit(org_id: OrgId, body: DebitIn, key: Caller, svc: Svc, idempotency_key: IdempotencyKey) -> Response:
    """Charge the cost of `action` now; refused whole (403 InsufficientCredits) if it does not fit. A member key
    meters as its own user (naming another is 403). `tags` are stored with the usage (GET .../usage/events)."""
    key.reach(org_id)
    result = await svc.billing.debit(org_id, action=body.action, idempotency_key=idempotency_key, tier=body.tier,
                                     quantity=body.quantity, user_id=key.as_user(body.user_id), country=body.country,
                                     tags=body.tags)
    # Serialized here, once: returned as a model, FastAPI would validate it against DebitOut a second time
    # (the hottest route; the spec still documents DebitOut).
    return Response(DebitOut.model_validate(result).model_dump_json(), status_code=201,
                    media_type="application/json")


@router.post("/holds", response_model=HoldOut, status_code=201,
             responses=problems(*_METER, "ConcurrencyLimitExceeded"))
async def hold(org_id: OrgId, body: HoldIn, key: Caller, svc: Svc, idempotency_key: HoldKey) -> HoldOut:
    """Reserve the cost of `action` for an operation that may fail: commit charges it, release (or its TTL
    passing) charges nothing. Refused as a debit is, and past the plan's open holds (429)."""
    key.reach(org_id)
    ttl = None if body.ttl_seconds is None else timedelta(seconds=body.ttl_seconds)
    return _hold(await svc.billing.open_hold(org_id, action=body.action, idempotency_key=idempotency_key,
                                             tier=body.tier, quantity=body.quantity,
                                             user_id=key.as_user(body.user_id), country=body.country, ttl=ttl,
                                             tags=body.tags))


@router.post("/holds/{hold_id}/commit", response_model=HoldOut, responses=problems(*ORG, "Forbidden", "HoldNotOpen"))
async def commit(org_id: OrgId, hold_id: HoldId, key: Caller, svc: Svc) -> HoldOut:
    """Charge an open hold (a repeat answers `replayed`; a released or expired hold is 409 HoldNotOpen)."""
    return await _settle(key, svc, org_id, hold_id, svc.billing.commit_hold)


@router.post("/holds/{hold_id}/release", response_model=HoldOut,
             responses=problems(*ORG, "Forbidden", "HoldNotOpen"))
async def release(org_id: OrgId, hold_id: HoldId, key: Caller, svc: Svc) -> HoldOut:
    """Give an open hold's credits back (a repeat answers `replayed`; a committed hold is 409 HoldNotOpen)."""
    return await _settle(key, svc, org_id, hold_id, svc.billing.release_hold)


@router.get("/balance", response_model=BalanceOut, responses=problems(*ORG))
async def balance(org_id: OrgId, key: Caller, svc: Svc) -> BalanceOut:
    key.reach(org_id)
    return BalanceOut.model_validate(await svc.billing.balance(org_id))


async def _settle(key: ApiKey, svc: Service, org_id: str, hold_id: str,
                  settle: Callable[[str, str], Awaitable[HoldResult]]) -> HoldOut:
    """Commit or release; a member settles only its own user's holds."""
    key.reach(org_id)
    if key.role == "member":
        owner = await svc.billing.ledger.hold_owner(org_id, hold_id)
        if owner is not None and owner != (key.user_id,):
            raise Forbidden(f"a member key settles only its own user's holds; hold {hold_id!r} is another's")
    return _hold(await settle(org_id, hold_id))


def _hold(h: HoldResult) -> HoldOut:
    return HoldOut(org_id=h.org_id, hold_id=h.idempotency_key, cost=h.cost, available=h.available, status=h.status,
                   replayed=h.replayed, concurrency_limit=h.concurrency_limit, concurrency_open=h.concurrency_open)
