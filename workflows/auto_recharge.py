"""One organization's auto-recharge, id `auto-recharge:{org_id}`.

A debit that leaves the balance under the threshold takes the wallet's recharge lease in its own
statement and signals-with-start this workflow: triggers that arrive together collapse into one run,
and the lease keeps the rest from signalling at all. Each round reads the settings, the balance and the
period's spending, then either buys the fewest packs that lift the balance above the threshold (in one
charge, within the period's spending limit), or, when even one pack would exceed the limit, charges
nothing, emails once per period and blocks triggers until the period ends. A decline emails and retries
after an hour; the third disables auto-recharge and says so. The run ends when the balance is back
above the threshold (or nothing more can be done); the next crossing starts a new one.

It buys packs, or amounts of credits at the catalog's per-credit price (seed 004): an amount is bought as a
pack of that many credits (models/auto_recharge.py recharge_unit), so the same rules decide how many.

Deterministic: no I/O here; every effect is an activity keyed by `{org}:{window_start}:auto_recharge:{n}`.
Prices come from the immutable catalog version the round's read names (RechargeContext.catalog_version;
version 1 in histories from before versions), never from whatever catalog is current at replay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError

from workflows.activity_defs import DISABLE_RECHARGE, PLAN_RECHARGE, SETTLE_RECHARGE
from workflows.common import ORG_ID, PERIOD_END, STATUS, charge_until_answered, declined, grant_paid_pack, notify

with workflow.unsafe.imports_passed_through():
    from models.auto_recharge import LEASE, decide, recharge_lines, recharge_unit
    from models.auto_recharge_types import (
        DisableRecharge,
        PlanRecharge,
        RechargeContext,
        RechargeOutcome,
        RechargeRun,
        RechargeStatus,
        RechargeTrigger,
        SettleRecharge,
        SettleResult,
    )
    from models.billing_types import ChargeRequest, SendEmail
    from models.catalog import CATALOGS
    from models.invoicing import charge_summary
    from models.keys import day, period_key, recharge_key, stamp, step_key
    from models.ledger_types import GrantPack
    from models.money import Money

RETRY_AFTER = timedelta(hours=1)   # a declined recharge is tried again after an hour...
MAX_ATTEMPTS = 3                   # ...three tries in all, then auto-recharge is turned off
ROUNDS_PER_RUN = 25                # then continue as new: history stays bounded
FIRST_CATALOG = 1                  # the catalog version of rounds read before catalogs had versions


@dataclass(frozen=True)
class _Round:
    status: RechargeStatus | None  # None: another round is due (balance still under, or a retry waits)
    packs: int = 0
    cents: int = 0


@workflow.defn(name="AutoRecharge")
class AutoRechargeWorkflow:
    @workflow.init
    def __init__(self, run: RechargeRun) -> None:
        self.org_id = run.org_id
        self.failed = run.failed_attempts
        self.triggers: list[RechargeTrigger] = []
        self.busy = True
        self.wake: datetime | None = None

    @workflow.signal
    def trigger(self, trigger: RechargeTrigger) -> None:
        self.triggers.append(trigger)

    @workflow.query
    def settled(self, at: datetime) -> bool:
        """True when nothing is in flight or due by `at` (the test kit waits for this)."""
        return not self.busy and not self.triggers and (self.wake is None or self.wake > at)

    @workflow.run
    async def run(self, run: RechargeRun) -> RechargeOutcome:
        self._publish("recharging", "starting", None)
        packs = cents = rounds = 0
        while True:
            self.triggers.clear()  # this round reads the balance afresh: it answers every trigger so far
            result = await self._round()
            packs, cents, rounds = packs + result.packs, cents + result.cents, rounds + 1
            if result.status is not None:
                self.busy = False
                return RechargeOutcome(self.org_id, result.status, packs, cents)
            if rounds >= ROUNDS_PER_RUN:
                self.busy = False
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(RechargeRun(self.org_id, self.failed))  # it starts with a round

    async def _round(self) -> _Round:
        self.busy, self.wake = True, None
        now = workflow.now()
        ctx = await PLAN_RECHARGE.run(PlanRecharge(self.org_id, now),
                                      summary="Read settings, balance and this period's auto-recharge spending")
        catalog = CATALOGS.get(ctx.catalog_version or FIRST_CATALOG)
        pack = recharge_unit(catalog, ctx.pack, ctx.credits)
        if not ctx.enabled or pack is None:
            self._publish("off", "auto-recharge is off", ctx)
            return _Round("off")
        decision = decide(enabled=ctx.enabled, available=ctx.available, threshold=ctx.threshold,
                          pack_name=ctx.pack, pack=pack, spending_limit_cents=ctx.spending_limit_cents,
                          spent_cents=ctx.spent_cents, vat_rate=ctx.vat_rate)
        if decision.action == "limit_reached":
            await self._email(ctx, period_key(self.org_id, ctx.window_start, "auto_recharge_limit"),
                              "auto_recharge_limit", now, spent=self._money(ctx, ctx.spent_cents),
                              limit=self._money(ctx, ctx.spending_limit_cents))
            # No trigger before the period ends (new settings lift this at once).
            if (await self._settle(ctx, now, ctx.window_end)).below_threshold:
                return _Round(None)
            self._publish("limit_reached", f"spending limit reached until {day(ctx.window_end)}", ctx)
            return _Round("limit_reached")
        if decision.action != "buy":
            return await self._done(ctx, now, "not_needed", 0, 0)

        key = recharge_key(self.org_id, ctx.window_start, ctx.payments_so_far + 1)
        lines = recharge_lines(catalog, ctx.pack, ctx.credits, pack, decision.packs, ctx.currency)
        summary = charge_summary(lines, ctx.vat_rate, ctx.currency)
        self._publish("recharging", f"charging {decision.packs} x {self._unit(ctx)}", ctx)
        try:
            charged = await charge_until_answered(
                ChargeRequest(self.org_id, key, "auto_recharge", lines, now, ctx.vat_rate, ctx.currency, summary),
                summary=summary, step="auto-recharge charge")
        except ActivityError as err:
            if declined(err) is None:
                raise
            return await self._declined(ctx, now, key, decision.total_cents)
        self.failed = 0
        credits = pack.credits * decision.packs
        await grant_paid_pack(GrantPack(self.org_id, key, credits, now),
                              summary=f"Grant {credits} pack credits (never expire)")
        await self._email(ctx, step_key(key, "receipt"), "auto_recharge_receipt", now, packs=decision.packs,
                          credits=str(credits), amount=self._money(ctx, charged.amount_cents),
                          invoice_number=charged.invoice_number,
                          pack=ctx.pack if ctx.credits is None else None)
        return await self._done(ctx, now, "recharged", decision.packs, charged.amount_cents)

    async def _done(self, ctx: RechargeContext, now: datetime, status: RechargeStatus, packs: int,
                    cents: int) -> _Round:
        """Re-arm the trigger; another round when the balance is still under the threshold."""
        settled = await self._settle(ctx, now, None)
        if settled.below_threshold:
            return _Round(None, packs, cents)
        after = replace(ctx, available=settled.available, spent_cents=ctx.spent_cents + cents)
        self._publish(status, f"bought {packs} x {self._unit(ctx)}" if packs else "balance above the threshold",
                      after)
        return _Round(status, packs, cents)

    async def _declined(self, ctx: RechargeContext, now: datetime, key: str, total_cents: int) -> _Round:
        self.failed += 1
        final = self.failed >= MAX_ATTEMPTS
        if final:
            off = await DISABLE_RECHARGE.run(
                DisableRecharge(self.org_id, "payment_failed", now, ctx.settings_version),
                summary="Disable auto-recharge: the card was declined 3 times")
            if not off:  # the settings changed meanwhile (a new card, say): decide again on those
                self.failed = 0
                return _Round(None)
        await self._email(ctx, step_key(key, "failed"), "auto_recharge_failed", now, attempt=self.failed, final=final,
                          amount=self._money(ctx, total_cents))
        if final:
            self.failed = 0
            self._publish("disabled", "disabled: the card was declined 3 times", ctx)
            return _Round("disabled")
        retry_at = now + RETRY_AFTER
        await self._settle(ctx, now, retry_at + LEASE)  # no trigger before the retry: it is coming
        self._publish("retrying", f"declined {self.failed}x, retrying {stamp(retry_at)}", ctx)
        self.busy, self.wake = False, retry_at
        await workflow.sleep(RETRY_AFTER, summary=f"retry auto-recharge at {stamp(retry_at)}")
        return _Round(None)

    async def _settle(self, ctx: RechargeContext, now: datetime, blocked_until: datetime | None) -> SettleResult:
        return await SETTLE_RECHARGE.run(
            SettleRecharge(self.org_id, now, ctx.settings_version, blocked_until),
            summary="Re-arm auto-recharge" if blocked_until is None
            else f"Hold auto-recharge triggers until {stamp(blocked_until)}")

    async def _email(self, ctx: RechargeContext, key: str, template: str, now: datetime,
                     **context: str | int | bool | None) -> None:
        if ctx.email is None:  # no billing contact (no profile): nothing to send to
            return
        await notify(SendEmail(self.org_id, key, template, ctx.email, now, {"org_id": self.org_id, **context}),
                             summary=f"Email {template} to the billing contact")

    @staticmethod
    def _unit(ctx: RechargeContext) -> str:
        return f"pack {ctx.pack}" if ctx.credits is None else f"{ctx.credits} credits"

    @staticmethod
    def _money(ctx: RechargeContext, cents: int) -> str:
        return str(Money(cents, ctx.currency))

    def _publish(self, status: str, what: str, ctx: RechargeContext | None) -> None:
        """Search attributes and current details: what an operator reads in the Temporal UI."""
        current = workflow.info().typed_search_attributes
        updates: list[SearchAttributeUpdate[Any]] = [ORG_ID.value_set(self.org_id), STATUS.value_set(status)]
        if ctx is not None:
            updates.append(PERIOD_END.value_set(ctx.window_end))
        changed = [u for u in updates if current.get(u.key) != u.value]
        if changed:
            workflow.upsert_search_attributes(changed)
        details = f"auto-recharge **{status}**: {what}"
        if ctx is not None:
            details += (
                f"\n\nthreshold {ctx.threshold} credits, {self._unit(ctx)}, balance {ctx.available} credits"
                f"\n\nspent {self._money(ctx, ctx.spent_cents)} of {self._money(ctx, ctx.spending_limit_cents)}"
                f" this period ({day(ctx.window_start)} to {day(ctx.window_end)})")
        if self.failed:
            details += f"\n\ndeclined attempts: {self.failed}"
        workflow.set_current_details(details)
