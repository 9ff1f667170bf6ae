"""Credit purchases (docs/api.md): a pack, or any amount of credits, charged once, granted once. Its
Idempotency-Key is the engine's own purchase key (BillingClient.buy_credits): a repeat answers the first
purchase, another pack or amount under it is 409.
Without one, every request is a new purchase: send one to retry safely."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from api.openapi import problems
from api.routes.common import MANAGE, OrgId, managing
from api.schemas import PurchaseIn, PurchaseOut
from api.service import Caller, Svc

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["purchases"])

PurchaseKey = Annotated[str | None, Header(
    alias="Idempotency-Key", examples=["order-17"], description="the purchase's key: a repeat answers the first "
    "purchase (charged once), another pack under it is 409; without it every request buys again")]


@router.post("/credit-purchases", response_model=PurchaseOut, status_code=201,
             responses=problems(*MANAGE, "PaymentDeclined", "PaymentProviderRefused", "IdempotencyConflict"))
async def buy_credits(org_id: OrgId, body: PurchaseIn, key: Caller, svc: Svc,
                      idempotency_key: PurchaseKey = None) -> PurchaseOut:
    """Buy a credit pack (`pack`), or any amount of credits (`credits`, at the catalog's per-credit price, at
    least its minimum; exactly one of the two, else 422): charged to the organization's card (402
    PaymentDeclined: nothing granted), invoiced, its credits granted (they never expire). An organization
    that never subscribed passes `email` and `payment_method`."""
    managing(key, org_id)
    return PurchaseOut.model_validate(await svc.billing.buy_credits(
        org_id, pack=body.pack, credits=body.credits, idempotency_key=idempotency_key, email=body.email,
        payment_method=body.payment_method))
