"""An organization's controls (docs/api.md): auto-recharge, per-user limits, usage guards, the low-balance
alert, the runway alert, opening a free wallet. Platform and admin keys set them; a member key reads its own limit only.
PUT and DELETE are idempotent as they are; the POSTs take an optional Idempotency-Key (api/idempotency.py)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from api.idempotency import IdempotencyKeyHeader, IdempotentPost
from api.openapi import problems
from api.routes.common import MANAGE, Action, OrgId, managing
from api.schemas import (
    AutoRechargeIn,
    AutoRechargeOut,
    LowBalanceAlertIn,
    LowBalanceAlertOut,
    ResumeOut,
    RunwayAlertIn,
    RunwayAlertOut,
    UsageGuardIn,
    UsageGuardOut,
    UserLimitIn,
    UserLimitOut,
    WalletIn,
    WalletOut,
)
from api.service import Caller, Service, Svc
from models.errors import Forbidden

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["settings"])

UserId = Annotated[str, Path(description="a user id, or '*': the organization's default limit for every user",
                                examples=["u1"])]


# -- auto-recharge ---------------------------------------------------------------------------------------------

@router.get("/auto-recharge", response_model=AutoRechargeOut, responses=problems(*MANAGE))
async def auto_recharge(org_id: OrgId, key: Caller, svc: Svc) -> AutoRechargeOut:
    """The auto-recharge settings (`configured: false` when never set)."""
    managing(key, org_id)
    await svc.billing.balance(org_id)  # an organization that does not exist is 404
    return await _auto_recharge(svc, org_id)


@router.put("/auto-recharge", response_model=AutoRechargeOut, responses=problems(*MANAGE))
async def set_auto_recharge(org_id: OrgId, body: AutoRechargeIn, key: Caller, svc: Svc) -> AutoRechargeOut:
    """When a debit leaves the balance under `threshold`, buy `pack`s, or amounts of `credits` at the catalog's
    per-credit price (exactly one of the two, else 422), as many as bring it back above, in one charge,
    spending at most `spending_limit_cents` per billing period; `enabled: false` turns it off."""
    managing(key, org_id)
    await svc.billing.set_auto_recharge(org_id, threshold=body.threshold, pack=body.pack, credits=body.credits,
                                        spending_limit_cents=body.spending_limit_cents, enabled=body.enabled)
    return await _auto_recharge(svc, org_id)


async def _auto_recharge(svc: Service, org_id: str) -> AutoRechargeOut:
    settings = await svc.billing.auto_recharge(org_id)
    profile = await svc.billing.payments.profile(org_id)
    currency = profile.currency if profile else "EUR"
    if settings is None:
        return AutoRechargeOut(org_id=org_id, configured=False, enabled=False, threshold=None, pack=None,
                               spending_limit_cents=None, currency=currency, disabled_reason=None)
    return AutoRechargeOut(org_id=org_id, configured=True, enabled=settings.enabled, threshold=settings.threshold,
                           pack=settings.pack, credits=settings.credits,
                           spending_limit_cents=settings.spending_limit_cents, currency=currency,
                           disabled_reason=settings.disabled_reason)


# -- per-user limits --------------------------------------------------------------------------------------------

@router.get("/users/{user_id}/limit", response_model=UserLimitOut, responses=problems(*MANAGE))
async def get_user_limit(org_id: OrgId, user_id: UserId, key: Caller, svc: Svc) -> UserLimitOut:
    """A user's limit per period, what the user spent this period and what remains. A member key reads its own
    user's only."""
    key.reach(org_id)
    if key.role == "member" and user_id != key.user_id:
        raise Forbidden(f"a member key reads only its own user's limit ({key.user_id!r})")
    return await _user_limit(svc, org_id, user_id)


@router.put("/users/{user_id}/limit", response_model=UserLimitOut, responses=problems(*MANAGE))
async def set_user_limit(org_id: OrgId, user_id: UserId, body: UserLimitIn, key: Caller, svc: Svc) -> UserLimitOut:
    """Credits the user may spend per period (user '*': the default of every user without a limit of their own);
    a debit past it is 403 UserLimitExceeded."""
    managing(key, org_id)
    await svc.billing.set_user_limit(org_id, user_id, body.limit)
    return await _user_limit(svc, org_id, user_id)


@router.delete("/users/{user_id}/limit", response_model=UserLimitOut, responses=problems(*MANAGE))
async def delete_user_limit(org_id: OrgId, user_id: UserId, key: Caller, svc: Svc) -> UserLimitOut:
    """Remove the user's own limit (the organization's default, if any, then applies)."""
    managing(key, org_id)
    await svc.billing.set_user_limit(org_id, user_id, None)
    return await _user_limit(svc, org_id, user_id)


async def _user_limit(svc: Service, org_id: str, user_id: str) -> UserLimitOut:
    balance = await svc.billing.balance(org_id)  # the period, and 404 for an organization that does not exist
    found = await svc.billing.ledger.user_limit(org_id, user_id, balance.period_start)
    remaining = None if found.limit is None else max(found.limit - found.used, Decimal(0))
    return UserLimitOut(org_id=org_id, user_id=user_id, limit=found.limit, source=found.source,
                        used=found.used, remaining=remaining, period_start=balance.period_start,
                        period_end=balance.period_end)


# -- usage guards -----------------------------------------------------------------------------------------------

@router.put("/usage-guards/{action}", response_model=UsageGuardOut, responses=problems(*MANAGE))
async def set_usage_guard(org_id: OrgId, action: Action, body: UsageGuardIn, key: Caller, svc: Svc) -> UsageGuardOut:
    """More than `max_uses` uses of `action` within `window_seconds` pause it (429 UsageGuardPaused, and an email)
    until resumed."""
    managing(key, org_id)
    await svc.billing.set_usage_guard(org_id, action, max_uses=body.max_uses,
                                      window=timedelta(seconds=body.window_seconds))
    return UsageGuardOut(org_id=org_id, action=action, max_uses=body.max_uses, window_seconds=body.window_seconds)


@router.delete("/usage-guards/{action}", response_model=UsageGuardOut, responses=problems(*MANAGE))
async def delete_usage_guard(org_id: OrgId, action: Action, key: Caller, svc: Svc) -> UsageGuardOut:
    """Remove the action's guard (a pause goes with it)."""
    managing(key, org_id)
    await svc.billing.set_usage_guard(org_id, action, max_uses=None)
    return UsageGuardOut(org_id=org_id, action=action, max_uses=None, window_seconds=None)


@router.post("/usage-guards/{action}/resume", response_model=ResumeOut,
             responses=problems(*MANAGE, "IdempotencyConflict"))
async def resume_action(org_id: OrgId, action: Action, key: Caller, svc: Svc, once: IdempotentPost,
                        idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Lift the guard's pause of `action` (`was_paused` says whether it was paused)."""
    managing(key, org_id)

    async def run() -> ResumeOut:
        return ResumeOut(org_id=org_id, action=action, was_paused=await svc.billing.resume_action(org_id, action))
    return await once(org_id, idempotency_key, run)


# -- low-balance alert and the wallet --------------------------------------------------------------------------

@router.put("/low-balance-alert", response_model=LowBalanceAlertOut, responses=problems(*MANAGE))
async def set_low_balance_alert(org_id: OrgId, body: LowBalanceAlertIn, key: Caller, svc: Svc) -> LowBalanceAlertOut:
    """Email once when the balance falls under `threshold` (re-armed when it rises above); null turns it off."""
    managing(key, org_id)
    await svc.billing.set_low_balance_alert(org_id, body.threshold)
    return LowBalanceAlertOut(org_id=org_id, threshold=body.threshold)


@router.get("/settings/runway-alert", response_model=RunwayAlertOut, responses=problems(*MANAGE))
async def runway_alert(org_id: OrgId, key: Caller, svc: Svc) -> RunwayAlertOut:
    """Whether the runway alert is on."""
    managing(key, org_id)
    await svc.billing.balance(org_id)  # an organization that does not exist is 404
    return RunwayAlertOut(org_id=org_id, enabled=await svc.billing.runway_alert(org_id))


@router.put("/settings/runway-alert", response_model=RunwayAlertOut, responses=problems(*MANAGE))
async def set_runway_alert(org_id: OrgId, body: RunwayAlertIn, key: Caller, svc: Svc) -> RunwayAlertOut:
    """Email (and the credits.runway event) once a period when the projected spend runs past the allocation
    while use is still under 80% of it (GET .../usage/projection shows the projection)."""
    managing(key, org_id)
    await svc.billing.balance(org_id)
    await svc.billing.set_runway_alert(org_id, body.enabled)
    return RunwayAlertOut(org_id=org_id, enabled=body.enabled)


@router.post("/wallet", response_model=WalletOut, status_code=201, responses=problems(*MANAGE, "IdempotencyConflict"))
async def open_wallet(org_id: OrgId, key: Caller, svc: Svc, once: IdempotentPost, body: WalletIn | None = None,
                      idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Open a free organization's wallet (50 credits per UTC day) so it meters before it ever subscribes; a repeat
    answers `replayed: true`. Paid plans come with a subscription."""
    managing(key, org_id)
    plan = body.plan if body else "free"

    async def run() -> WalletOut:
        return WalletOut.model_validate(await svc.billing.open_wallet(org_id, plan=plan))
    return await once(org_id, idempotency_key, run, status_code=201)
