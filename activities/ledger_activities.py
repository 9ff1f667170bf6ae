"""The ledger's writes as Temporal activities, for the lifecycle workflows: one dataclass in, a typed
result out, idempotent by the business key the workflow passes (never by run id)."""

from __future__ import annotations

from temporalio import activity

from activities.errors import typed_errors
from activities.ledger import Ledger
from models.ledger_types import ChangePlan, GrantPack, LedgerWriteResult, StartPeriod


class LedgerActivities:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @activity.defn(name="ledger.start_period")
    @typed_errors
    async def start_period(self, req: StartPeriod) -> LedgerWriteResult:
        return await self.ledger.start_period(req)

    @activity.defn(name="ledger.change_plan")
    @typed_errors
    async def change_plan(self, req: ChangePlan) -> LedgerWriteResult:
        return await self.ledger.change_plan(req)

    @activity.defn(name="ledger.grant_pack")
    @typed_errors
    async def grant_pack(self, req: GrantPack) -> LedgerWriteResult:
        return await self.ledger.grant_pack(req)

    def all(self) -> list[object]:
        return [self.start_period, self.change_plan, self.grant_pack]
