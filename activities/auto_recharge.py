"""The auto-recharge workflow's steps as Temporal activities, over the store in ledger/auto_recharge.py."""

from __future__ import annotations

from temporalio import activity

from activities.errors import typed_errors
from ledger.auto_recharge import AutoRecharges
from models.auto_recharge_types import (
    BillingProfile,
    DisableRecharge,
    PlanRecharge,
    RechargeContext,
    SettleRecharge,
    SettleResult,
)
from payments import Payments
from workflows.activity_defs import BILLING_PROFILE, DISABLE_RECHARGE, PLAN_RECHARGE, SETTLE_RECHARGE


class AutoRechargeActivities:
    """The auto-recharge workflow's steps, and the billing profile read both pack workflows start from."""

    def __init__(self, store: AutoRecharges, payments: Payments) -> None:
        self.store = store
        self.payments = payments

    @activity.defn(name=PLAN_RECHARGE.name)
    @typed_errors
    async def plan(self, req: PlanRecharge) -> RechargeContext:
        return await self.store.plan(req)

    @activity.defn(name=SETTLE_RECHARGE.name)
    @typed_errors
    async def settle(self, req: SettleRecharge) -> SettleResult:
        return await self.store.settle(req)

    @activity.defn(name=DISABLE_RECHARGE.name)
    @typed_errors
    async def disable(self, req: DisableRecharge) -> bool:
        return await self.store.disable(req)

    @activity.defn(name=BILLING_PROFILE.name)
    @typed_errors
    async def profile(self, org_id: str) -> BillingProfile | None:
        return await self.payments.profile(org_id)

    def all(self) -> list[object]:
        return [self.plan, self.settle, self.disable, self.profile]
