"""Quotas (docs/api.md): the plan's non-credit limits (sessions, events, enrichments, storage), counted per period.

Recording is metering: any key of the organization may (a member key too, as it debits); the quotas' usage is the
organization's, read as its balance is, by any key of it. The Idempotency-Key is the engine's own (as a debit's):
required, written with the count, a repeat answers `replayed: true` and counts nothing; the same key with another
quota or quantity is 409."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path

from api.openapi import problems
from api.routes.common import ORG, OrgId
from api.schemas import QuotaRecordIn, QuotaResultOut, QuotasOut, QuotaUsageOut
from api.service import Caller, Svc

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["quotas"])

Quota = Annotated[str, Path(description="a quota of the catalog's plans", examples=["sessions"])]
RecordKey = Annotated[str, Header(alias="Idempotency-Key", examples=["session-8812"], description="the record's "
                                  "business key: a repeat answers as the first (replayed) and counts nothing, "
                                  "another record under it is 409")]


@router.post("/quotas/{quota}/usage", response_model=QuotaResultOut, status_code=201,
             responses=problems(*ORG, "QuotaExceeded", "IdempotencyConflict"))
async def record_usage(org_id: OrgId, quota: Quota, key: Caller, svc: Svc, idempotency_key: RecordKey,
                       body: QuotaRecordIn | None = None) -> QuotaResultOut:
    """Count `quantity` (default 1) against `quota` this period. Past a hard limit: 403 QuotaExceeded and nothing
    counted; past a soft one it counts. `warning`: at or past 80% of the limit after this record."""
    key.reach(org_id)
    quantity = body.quantity if body is not None else QuotaRecordIn().quantity
    return QuotaResultOut.model_validate(await svc.billing.record_usage(org_id, quota, quantity=quantity,
                                                                        idempotency_key=idempotency_key))


@router.get("/quotas", response_model=QuotasOut, responses=problems(*ORG))
async def quotas(org_id: OrgId, key: Caller, svc: Svc) -> QuotasOut:
    """Every quota of the organization's plan: used this period against its limit (amber at 80%, `exceeded` at
    100%)."""
    key.reach(org_id)
    return QuotasOut(org_id=org_id, quotas=[QuotaUsageOut.model_validate(q) for q in await svc.billing.quotas(org_id)])
