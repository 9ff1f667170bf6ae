"""The ledger's writes as Temporal activities, for the lifecycle workflows: one dataclass in, a typed
result out, idempotent by the business key the workflow passes (never by run id)."""

from __future__ import annotations

from temporalio import activity

from activities.errors import typed_errors
from ledger import Ledger
from models.ledger_types import (
    ChangePlan,
    CloseOverage,
    GrantPack,
    LedgerWriteResult,
    OverageClosed,
    SetTerms,
    StartPeriod,
)
from workflows.activity_defs import CHANGE_PLAN, CLOSE_OVERAGE, GRANT_PACK, SET_TERMS, START_PERIOD


class LedgerActivities:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @activity.defn(name=START_PERIOD.name)
    @typed_errors
    async def start_period(self, req: StartPeriod) -> LedgerWriteResult:
        return await self.ledger.start_period(req)

    @activity.defn(name=CHANGE_PLAN.name)
    @typed_errors
    async def change_plan(self, req: ChangePlan) -> LedgerWriteResult:
        return await self.ledger.change_plan(req)

    @activity.defn(name=GRANT_PACK.name)
    @typed_errors
    async def grant_pack(self, req: GrantPack) -> LedgerWriteResult:
        return await self.ledger.grant_pack(req)

    @activity.defn(name=SET_TERMS.name)
    @typed_errors
    async def set_terms(self, req: SetTerms) -> bool:
        return await self.ledger.set_terms(req.org_id, req.terms)

    @activity.defn(name=CLOSE_OVERAGE.name)
    @typed_errors
    async def close_overage(self, req: CloseOverage) -> OverageClosed:
        return await self.ledger.close_overage(req)

    def all(self) -> list[object]:
        return [self.start_period, self.change_plan, self.grant_pack, self.set_terms, self.close_overage]
