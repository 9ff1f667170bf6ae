"""Metering: debits, holds, balance (DESIGN.md section 9). Each calls the same BillingClient path as the SDK:
a debit through HTTP is still one database round trip (the key is authenticated from its cache)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from api.schemas import BalanceOut, DebitIn, DebitOut
from api.service import Caller, Svc

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["metering"])

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", description="the debit's business key: a repeat "
                                       "answers as the first (replayed), another request under it is 409")]


@router.post("/debits", response_model=DebitOut, status_code=201)
async def debit(org_id: str, body: DebitIn, key: Caller, svc: Svc, idempotency_key: IdempotencyKey) -> DebitOut:
    """Charge the cost of `action` now; refused whole (403 InsufficientCredits) if it does not fit."""
    key.reach(org_id)
    result = await svc.billing.debit(org_id, action=body.action, idempotency_key=idempotency_key, tier=body.tier,
                                     quantity=body.quantity, user_id=key.as_user(body.user_id), country=body.country)
    return DebitOut(org_id=result.org_id, idempotency_key=result.idempotency_key, cost=result.cost,
                    available=result.available, replayed=result.replayed)


@router.get("/balance", response_model=BalanceOut)
async def balance(org_id: str, key: Caller, svc: Svc) -> BalanceOut:
    key.reach(org_id)
    b = await svc.billing.balance(org_id)
    return BalanceOut(org_id=b.org_id, plan_name=b.plan_name, available=b.available, plan=b.plan, topup=b.topup,
                      held=b.held, allocation=b.allocation, consumed_this_period=b.consumed_this_period,
                      period_start=b.period_start, period_end=b.period_end)
