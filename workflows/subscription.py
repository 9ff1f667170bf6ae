"""One organization's subscription, as a durable entity workflow (id `subscription:{org_id}`).

It reads like the business process: a period runs until its end, then renews (pending downgrade, seat
reduction or cancellation applied, seats x price charged, invoice issued, the new allocation granted,
receipt emailed) and continues as new with the whole state in one dataclass. Trials end, dunning retries
(1, 3 and 5 days after the renewal date) and reverts to Free all fire from durable timers at absolute
times. Changes arrive as Updates whose validators refuse bad requests before they enter history; one
lock serialises the handlers and the main loop's own steps.

Deterministic: no I/O here. Every side effect is an activity called by name (this module never imports
psycopg, stripe or jinja2), with the workflow's clock as business time and a business key
`{org}:{period_start}:{purpose}` that makes it idempotent.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activity_defs import (
    CHANGE_PLAN,
    CHARGE,
    CLOSE_OVERAGE,
    ENSURE_CUSTOMER,
    INVOICE_STEP,
    ISSUE_INVOICE,
    SET_TERMS,
    START_PERIOD,
)
from workflows.common import (
    INCIDENT,
    ORG_ID,
    PERIOD_END,
    PLAN,
    STATUS,
    IncidentEvents,
    declined,
    failure_parts,
    failure_text,
    notify,
    reject,
)

with workflow.unsafe.imports_passed_through():
    from models.billing_types import (
        ChargeRequest,
        ChargeResult,
        EnsureCustomer,
        InvoiceLine,
        InvoiceState,
        InvoiceStep,
        IssueInvoice,
        MarkInvoice,
        Purpose,
        SendEmail,
    )
    from models.catalog import CATALOGS, Catalog
    from models.contract_types import (
        ContractTerms,
        allowance,
        check_contract,
        concurrency_limit,
        contract_seat_cents,
        describe,
        in_term,
        number_text,
        overage_cents,
    )
    from models.errors import (
        BillingError,
        InvalidRequest,
        PaymentDeclined,
        PaymentProviderRefused,
        ServiceUnavailable,
        from_failure,
    )
    from models.invoicing import charge_summary, totals
    from models.keys import day, period_key, stamp, step_key
    from models.ledger_types import ChangePlan, CloseOverage, SetTerms, StartPeriod, WalletTerms
    from models.money import Money
    from models.periods import credit_month_bounds, period_bounds, remaining_fraction
    from models.proration import added_seats_cents, upgrade_cents
    from models.subscription_rules import (
        check_change_seats,
        check_changeable,
        check_downgrade,
        check_subscribe,
        check_upgrade,
        incident_backoff,
        seat_price_cents,
    )
    from models.subscription_types import (
        ContractRequest,
        Incident,
        MigrateRequest,
        OpenInvoice,
        PlanRequest,
        SeatsRequest,
        SubscribeRequest,
        Subscription,
        SubscriptionState,
        UnfinishedChange,
    )

RETRY_AFTER_DAYS = (1, 3, 5)           # dunning: retries after the renewal date
# Invoice terms: the due date (a reminder), then dunning 1, 3 and 5 days after it; unpaid after the last: Free.
INVOICE_DUNNING_DAYS = (0, 1, 3, 5)
# A monthly period is at least 28 days: an invoice's dunning (net days + 5) ends before the next one is issued.
MAX_NET_DAYS_MONTHLY = 28 - INVOICE_DUNNING_DAYS[-1] - 1
INCIDENTS_PATCH = "incidents-1"        # the main loop survives activity errors (workflow.patched)
TRIAL_NOTICE = timedelta(days=3)       # "your trial ends in 3 days"
# Nothing holds the subscription's lock across an unbounded wait (failure model rule 4): an update's
# activities give up after UPDATE_DEADLINE (the caller is answered), a main-loop step's after
# STEP_DEADLINE (it becomes an incident and the lock is free until its next try).
UPDATE_DEADLINE = timedelta(minutes=2)
STEP_DEADLINE = timedelta(minutes=10)


@workflow.defn(name="Subscription")
class SubscriptionWorkflow:
    @workflow.init
    def __init__(self, state: SubscriptionState) -> None:
        # The state is set here, not in run: an update delivered with the start runs before run does.
        self.s = state
        self.lock = asyncio.Lock()
        self.changed = False
        self.deadline: timedelta | None = None  # of each activity, while an update or a step runs
        self.effects_started = False            # an update reached a charge, grant or plan change
        self.incident_events: IncidentEvents | None = None  # the open incident's webhook events

    # -- the main loop: wait for the next due moment, act, continue as new at each renewal --------------

    @workflow.run
    async def run(self, state: SubscriptionState) -> None:
        self._publish()
        while True:
            wake = self._next_wake()
            self.changed = False
            if wake is None:
                await workflow.wait_condition(lambda: self.changed)
                continue
            delay = wake - workflow.now()
            if delay > timedelta(0):
                try:
                    await workflow.wait_condition(lambda: self.changed, timeout=delay,
                                                  timeout_summary=f"until {stamp(wake)}")
                    continue  # a change arrived: the next due moment may have moved
                except TimeoutError:
                    pass
            async with self.lock:
                renewed = await self._act(workflow.now())
            if renewed:
                # Continue-as-new only from here, after every handler finished: history stays bounded.
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self.s)

    def _next_wake(self) -> datetime | None:
        s = self.s
        if s.incident is not None:  # the due step failed for good: it runs again then (or when asked)
            return s.incident.retry_at
        if s.status == "trialing":
            assert s.trial_end is not None
            notice = s.trial_end - TRIAL_NOTICE
            # A trial of 3 days or less gets no "ends in 3 days" notice.
            if not s.trial_notice_sent and s.period_start is not None and notice > s.period_start:
                return notice
            return s.trial_end
        if s.status == "active":
            assert s.anchor is not None and s.period_end is not None
            wake = s.period_end
            if s.interval == "year":
                month_end = credit_month_bounds(s.anchor, s.credit_month)[1]
                if month_end < s.period_end:
                    wake = month_end
            if s.open_invoice is not None:
                wake = min(wake, self._invoice_wake(s.open_invoice))
            return wake
        if s.status == "past_due":
            assert s.period_start is not None
            return s.period_start + timedelta(days=RETRY_AFTER_DAYS[s.failed_charges - 1])
        return None

    async def _act(self, now: datetime) -> bool:
        """`_on_due`, surviving any activity error (failure model rule 3): a step that fails for good (an
        error Temporal does not retry in place) is put back as it was before the step, recorded as an
        incident (search attribute BillingIncident, current details, a counter) and run again on a backoff
        or when an operator asks; its effects are keyed, so what it had done answers as a repeat."""
        if not workflow.patched(INCIDENTS_PATCH):  # histories from before incidents replay as they ran
            return await self._on_due(now)
        before = copy.deepcopy(self.s)
        self.deadline = STEP_DEADLINE
        try:
            renewed = await self._on_due(now)
        except ActivityError as err:
            self.s = before
            self._record_incident(now, err)
            await self._incident_opened(err)
            return False
        finally:
            self.deadline = None
        if self.s.incident is not None:
            incident = self.s.incident
            workflow.logger.info("incident of %s resolved: %s", self.s.org_id, incident.step)
            self.s.incident = None
            self._publish()
            kind, _, message = incident.error.partition(": ")  # its events if this run had no opening
            events = self.incident_events or IncidentEvents(self.s.org_id, incident.step, incident.since, None,
                                                            (kind, message) if message else ("Error", kind))
            self.incident_events = None
            await events.resolved(workflow.now())
        return renewed

    def _record_incident(self, now: datetime, err: ActivityError) -> None:
        s = self.s
        error = failure_text(err)
        step = {"trialing": "trial", "active": "renewal", "past_due": "dunning retry"}.get(s.status or "", "step")
        if s.status == "active" and s.period_end is not None and now < s.period_end:
            step = "monthly credits"  # an annual plan's grant between renewals
        if s.unfinished is not None:
            step = s.unfinished.kind  # an update's change, completed by the loop
        attempts = s.incident.attempts + 1 if s.incident is not None else 1
        since = s.incident.since if s.incident is not None else now
        s.incident = Incident(step, error, since, attempts, now + incident_backoff(attempts))
        workflow.logger.warning("incident of %s: %s failed (attempt %d): %s", s.org_id, step, attempts, error)
        workflow.metric_meter().create_counter("billing_incidents", "main-loop steps that failed for good").add(
            1, {"step": step})
        self._publish()

    async def _incident_opened(self, err: ActivityError) -> None:
        """The webhook event of the incident `_record_incident` just recorded: written when it opens, and at
        each failed retry until it is (workflows/common.py IncidentEvents; a repeat writes nothing more)."""
        i = self.s.incident
        assert i is not None
        if self.incident_events is None or i.attempts == 1:
            self.incident_events = IncidentEvents(self.s.org_id, i.step, i.since, None, failure_parts(err))
        await self.incident_events.opened()

    @workflow.update
    async def retry_now(self) -> Subscription:
        """An operator asks: run the failed step again now, and answer once it went through or failed
        again (BillingClient.retry_now). Without an open incident it answers at once."""
        incident = self.s.incident
        if incident is None:
            return self._view()
        attempts = incident.attempts
        incident.retry_at = workflow.now()
        self.changed = True
        await workflow.wait_condition(lambda: self.s.incident is None or self.s.incident.attempts > attempts)
        return self._view()

    async def _on_due(self, now: datetime) -> bool:
        """Do what is due at `now`; True when a renewal happened (the main loop continues as new)."""
        s = self.s
        if s.unfinished is not None:  # first complete the change an update started
            change = s.unfinished
            try:
                await self._finish(change)
            except ApplicationError as err:
                if err.type != "PaymentDeclined":
                    raise
                # Declined now: nothing was charged, so the change is dropped (its caller was told it was
                # in doubt; subscription() shows it did not happen).
                workflow.logger.info("unfinished %s of %s declined: dropped", change.kind, s.org_id)
                s.unfinished = None
                self._publish()
            return False
        if s.status == "trialing":
            assert s.trial_end is not None
            if now < s.trial_end:
                s.trial_notice_sent = True
                await self._email("trial_ending", period_key(s.org_id, s.trial_end, "trial-ending"), now,
                                  plan=s.plan, trial_end=day(s.trial_end),
                                  amount=str(self._money(self._period_lines(s.plan, s.seats, now, now))))
                return False
            await self._end_trial(now)
            return True
        if s.status == "active":
            assert s.anchor is not None and s.period_end is not None
            if s.open_invoice is not None and now >= self._invoice_wake(s.open_invoice):
                await self._invoice_step(now)
                return False
            if now < s.period_end:
                if s.interval != "year":
                    return False  # nothing due yet (a timer never fires early; this keeps it so)
                s.credit_month += 1  # annual plan: next month's credits
                start, end = credit_month_bounds(s.anchor, s.credit_month)
                await self._grant(s.plan, start, min(end, s.period_end), now, "credits")
                return False
            await self._renew(now)
            return True
        if s.status == "past_due":
            await self._retry(now)
            return True
        return False

    # -- lifecycle steps ------------------------------------------------------------------------------

    async def _end_trial(self, now: datetime) -> None:
        s = self.s
        assert s.trial_end is not None
        if s.cancel_at_period_end:
            await self._to_free(now, "your trial ended and the subscription was cancelled")
            return
        if s.pending_plan is not None:
            s.plan, s.catalog_version = s.pending_plan, s.pending_version or s.catalog_version
        s.seats = s.pending_seats or s.seats
        s.pending_plan, s.pending_seats, s.pending_version = None, None, None
        s.anchor, s.period_index, s.credit_month = s.trial_end, 0, 0
        await self._start_paid_period(now, "subscription", after_decline="free")

    async def _renew(self, now: datetime) -> None:
        s = self.s
        if s.cancel_at_period_end:
            await self._to_free(now, "the subscription was cancelled at the end of its period")
            return
        if s.pending_plan is not None:
            s.plan, s.catalog_version = s.pending_plan, s.pending_version or s.catalog_version
        s.seats = s.pending_seats or s.seats
        s.pending_plan, s.pending_seats, s.pending_version = None, None, None
        s.period_index += 1
        s.credit_month = s.period_index * (12 if s.interval == "year" else 1)
        s.renewals += 1
        await self._start_paid_period(now, "renewal", after_decline="past_due")

    async def _start_paid_period(self, now: datetime, purpose: Purpose, *, after_decline: str) -> None:
        """Charge the period starting at the anchor's period `period_index`; on success grant its credits
        and send the receipt; on a decline go past_due (renewal) or to Free (first period after a trial)."""
        s = self.s
        assert s.anchor is not None
        s.period_start, s.period_end = period_bounds(s.anchor, s.interval, s.period_index)
        s.change_seq, s.failed_charges = 0, 0
        lines = self._period_lines(s.plan, s.seats, s.period_start, s.period_end) + await self._overage_lines(now)
        key = self._key(purpose)
        terms = self._terms(s.period_start)
        if terms is not None and terms.payment_terms == "invoice":
            await self._issue_invoice(key, purpose, lines, now, s.period_start + timedelta(days=terms.net_days))
            return
        charged = await self._charge(key, purpose, lines, now)
        if charged is None:
            if after_decline == "free":
                await self._to_free(now, "the first payment after your trial was declined")
                return
            s.status, s.failed_charges = "past_due", 1
            self._publish()
            # No new plan credits until paid; the old period's credits expire now, explicitly.
            await self._grant(s.plan, s.period_start, s.period_end, now, "unpaid", grant=False)
            await self._email("payment_failed", step_key(key, "failed"), now, plan=s.plan,
                              amount=str(self._money(lines)), next_retry=day(self._next_wake()))
            return
        s.status = "active"
        self._publish()
        await self._terms_for_period(now)
        await self._paid(charged, now)

    async def _retry(self, now: datetime) -> None:
        s = self.s
        assert s.period_start is not None and s.period_end is not None
        lines = self._period_lines(s.plan, s.seats, s.period_start, s.period_end) + await self._overage_lines(now)
        key = self._key(f"retry-{s.failed_charges}")
        charged = await self._charge(key, "retry", lines, now)
        if charged is None:
            s.failed_charges += 1
            last = s.failed_charges > len(RETRY_AFTER_DAYS)
            await self._email("payment_failed", step_key(key, "failed"), now, plan=s.plan,
                              amount=str(self._money(lines)), next_retry=None if last else day(self._next_wake()))
            if last:
                await self._to_free(now, "the payment for your subscription failed 4 times")
            return
        s.status, s.failed_charges = "active", 0  # the period anchor is unchanged
        self._publish()
        await self._terms_for_period(now)
        await self._paid(charged, now)

    async def _paid(self, charged: ChargeResult, now: datetime) -> None:
        """After a period's charge: its credits (this month's, for annual plans) and the receipt, together."""
        s = self.s
        assert s.period_end is not None
        start, end = self._credit_window(now)
        await asyncio.gather(
            self._grant(s.plan, start, min(end, s.period_end), now, "credits"),
            self._email("receipt", step_key(charged.key, "receipt"), now, plan=s.plan, seats=s.seats,
                        amount=str(Money(charged.amount_cents, charged.currency)),
                        invoice_number=charged.invoice_number,
                        period_start=day(s.period_start), period_end=day(s.period_end)),
        )

    def _credit_window(self, now: datetime) -> tuple[datetime, datetime]:
        """The credits a paid period grants now: the period's, or for annual plans this month's."""
        s = self.s
        assert s.anchor is not None and s.period_start is not None and s.period_end is not None
        if s.interval != "year":
            return s.period_start, s.period_end
        months = 0
        while credit_month_bounds(s.anchor, s.period_index * 12 + months + 1)[0] <= now and months < 11:
            months += 1
        s.credit_month = s.period_index * 12 + months
        return credit_month_bounds(s.anchor, s.credit_month)

    async def _to_free(self, now: datetime, reason: str) -> None:
        s = self.s
        left = s.plan
        s.status, s.plan, s.seats = "free", "free", 1
        s.anchor = s.period_start = s.period_end = s.trial_end = None
        s.pending_plan, s.pending_seats, s.pending_version, s.cancel_at_period_end = None, None, None, False
        s.failed_charges = s.change_seq = 0
        s.open_invoice = None  # unpaid, it stays open in the books (a debt); the subscription no longer waits on it
        if s.contract is not None:  # a contract is over its plan: on Free it ends
            s.contract = None
            await self._apply_terms(now)
        self._publish()
        await self._grant("free", now, None, now, "free")
        await self._email("reverted_to_free", period_key(s.org_id, now, "free"), now, plan=left, reason=reason)

    # -- changes an update starts: completed by the update, or by the main loop when it ran out of time ----

    async def _in_update(self, change: UnfinishedChange, before: SubscriptionState) -> None:
        """Apply `change` for an update, each activity bounded by UPDATE_DEADLINE. A failure before any
        effect (or a charge Stripe refused outright) answers the caller with its typed error and puts the
        state back as it was `before` the update (its change number stays used); after one (a charge, a
        grant or a plan change may have happened), the change is kept as unfinished, recorded as an
        incident and completed by the main loop, and the caller gets ServiceUnavailable saying so."""
        self.deadline, self.effects_started = UPDATE_DEADLINE, False
        try:
            await self._finish(change)
        except ActivityError as err:
            if not self.effects_started:
                before.change_seq = self.s.change_seq
                self.s = before
                self._publish()
                raise self._refusal(err) from None
            self.s.unfinished = change
            self._record_incident(workflow.now(), err)
            await self._incident_opened(err)
            self.changed = True
            raise reject(ServiceUnavailable(
                f"{self.s.org_id}: the {change.kind} did not complete within {UPDATE_DEADLINE} "
                f"({failure_text(err)}); it may have been charged, so the subscription completes it on its own: "
                "subscription().incident says where it stands")) from None
        finally:
            self.deadline = None
        self.changed = True

    async def _finish(self, change: UnfinishedChange) -> None:
        """The effects of `change`, keyed by its time and sequence: a re-run repeats nothing."""
        s = self.s
        if change.kind == "subscribe":
            await self._start_paid_period(change.at, "subscription", after_decline="free")
        elif change.kind == "trial":
            assert s.trial_end is not None
            await self._grant(s.plan, change.at, s.trial_end, change.at, "trial")
            await self._email("trial_started", period_key(s.org_id, change.at, "trial"), change.at,
                              plan=s.plan, seats=s.seats, trial_end=day(s.trial_end))
        elif change.kind == "upgrade":
            assert change.plan is not None
            await self._upgrade(change.plan, change.at, change.seq, change.version or s.catalog_version)
        elif change.kind == "seats":
            assert change.seats is not None
            await self._add_seats(change.seats, change.at, change.seq)
        elif change.kind == "contract":
            await self._apply_contract(change.at, change.seq)
        else:
            raise ValueError(f"unknown change {change.kind!r}")
        s.unfinished = None

    async def _upgrade(self, plan: str, now: datetime, seq: int, version: int) -> None:
        s = self.s
        assert s.period_start is not None and s.period_end is not None
        old = s.plan
        key = self._key(f"upgrade-{seq}")
        amount_text = "no charge during the trial" if s.status == "trialing" else str(Money(0, s.currency))
        invoice = ""
        if s.status == "active":
            left, total = remaining_fraction(s.period_start, s.period_end, now)
            cents = upgrade_cents(self._seat_cents(old, s.catalog_version, now),
                                  self._seat_cents(plan, version, now), s.seats, left, total)
            if cents > 0:
                lines = [InvoiceLine(f"upgrade {old} to {plan} x {s.seats} seats, "
                                     f"{day(now)} to {day(s.period_end)} (prorated)", 1, cents, cents)]
                charged = await self._charge(key, "upgrade", lines, now, raise_decline=True)
                assert charged is not None
                amount_text, invoice = str(Money(charged.amount_cents, charged.currency)), charged.invoice_number
        self.effects_started = True
        await CHANGE_PLAN.run(ChangePlan(s.org_id, key, plan, now, credits=self._allowance(plan, version, now)),
                              summary=f"Plan credits: {old} to {plan}", deadline=self.deadline)
        s.plan, s.catalog_version = plan, version
        s.pending_plan, s.pending_version = None, None  # an upgrade replaces a pending downgrade
        if s.contract is not None:
            await self._apply_terms(now)  # the open-hold limit is the new plan's times the contract's
        self._publish()
        await self._email("upgrade_confirmed", step_key(key, "email"), now, old_plan=old, plan=s.plan,
                          seats=s.seats, amount=amount_text, invoice_number=invoice)

    async def _add_seats(self, seats: int, now: datetime, seq: int) -> None:
        s = self.s
        assert s.period_start is not None and s.period_end is not None
        key = self._key(f"seats-{seq}")
        old = s.seats
        amount: str | None = None
        if s.status == "active":
            left, total = remaining_fraction(s.period_start, s.period_end, now)
            cents = added_seats_cents(self._seat_cents(s.plan, s.catalog_version, now), seats - old, left, total)
            if cents > 0:
                lines = [InvoiceLine(f"{s.plan} x {seats - old} more seats, {day(now)} to "
                                     f"{day(s.period_end)} (prorated)", 1, cents, cents)]
                charged = await self._charge(key, "seats", lines, now, raise_decline=True)
                assert charged is not None
                amount = str(Money(charged.amount_cents, charged.currency))
        s.seats, s.pending_seats = seats, None
        self._publish()
        await self._email("seats_changed", step_key(key, "email"), now, plan=s.plan, old_seats=old, seats=seats,
                          amount=amount, effective=day(now))

    def _refusal(self, err: ActivityError) -> ApplicationError:
        """An update's answer for an activity that failed before any effect: its typed error, or
        ServiceUnavailable when a part did not answer in time."""
        return reject(from_failure(err) or ServiceUnavailable(
            f"{self.s.org_id}: a part did not answer within {UPDATE_DEADLINE}, nothing was changed: "
            f"{failure_text(err)}"))

    # -- updates: validators refuse before history; handlers run one at a time ---------------------------

    @workflow.update
    async def subscribe(self, req: SubscribeRequest) -> Subscription:
        async with self.lock:
            s = self.s
            self._check_subscribe(req)  # again under the lock: an earlier update may have changed the state
            before = copy.deepcopy(s)
            now = workflow.now()
            try:
                customer = await ENSURE_CUSTOMER.run(
                    EnsureCustomer(s.org_id, req.email, now, req.payment_method, req.vat_rate, s.currency),
                    summary=f"Stripe customer for {s.org_id}", deadline=UPDATE_DEADLINE)
            except ActivityError as err:  # nothing changed yet: the caller gets the typed error
                raise self._refusal(err) from None
            if req.trial_days == 0 and customer.payment_method is None:
                raise reject(PaymentDeclined("a payment method is required to subscribe without a trial",
                                             "no_payment_method"))
            s.email, s.plan, s.seats, s.catalog_version = req.email, req.plan, req.seats, req.catalog_version
            s.interval, s.vat_rate = req.interval, req.vat_rate
            s.pending_plan, s.pending_seats, s.cancel_at_period_end = None, None, False
            if req.trial_days > 0:
                s.status, s.period_start = "trialing", now
                s.trial_end = s.period_end = now + timedelta(days=req.trial_days)
                s.trial_notice_sent = False
                self._publish()
                await self._in_update(UnfinishedChange("trial", now), before)
            else:
                s.anchor, s.period_index, s.credit_month = now, 0, 0
                await self._in_update(UnfinishedChange("subscribe", now), before)
                if s.status == "free":
                    raise ApplicationError("the first payment was declined: the organization stays on Free",
                                           "card_declined", type="PaymentDeclined", non_retryable=True)
            return self._view()

    @subscribe.validator
    def _check_subscribe(self, req: SubscribeRequest) -> None:
        self._check_finished()
        try:
            check_subscribe(CATALOGS.get(req.catalog_version), self.s.status, req.plan, req.seats, req.interval,
                            req.trial_days, req.email, req.vat_rate)
        except BillingError as exc:
            raise reject(exc) from None

    @workflow.update
    async def upgrade(self, req: PlanRequest) -> Subscription:
        async with self.lock:
            s = self.s
            self._validated(lambda: check_upgrade(CATALOGS.get(req.catalog_version), s.status, s.plan, req.plan))
            before = copy.deepcopy(s)
            s.change_seq += 1
            await self._in_update(UnfinishedChange("upgrade", workflow.now(), s.change_seq, plan=req.plan,
                                                   version=req.catalog_version), before)
            return self._view()

    @upgrade.validator
    def _check_upgrade(self, req: PlanRequest) -> None:
        self._validated(lambda: check_upgrade(CATALOGS.get(req.catalog_version), self.s.status, self.s.plan,
                                              req.plan))

    @workflow.update
    async def downgrade(self, req: PlanRequest) -> Subscription:
        async with self.lock:
            s = self.s
            target = self._validated(
                lambda: check_downgrade(CATALOGS.get(req.catalog_version), s.status, s.plan, req.plan,
                                        s.pending_seats or s.seats))
            if target is not None and target.name == s.pending_plan:
                return self._view()  # already scheduled: a repeat changes nothing and emails nothing
            s.pending_plan = None if target is None else target.name
            s.pending_version = None if target is None else req.catalog_version
            s.change_seq += 1
            self._publish()
            if target is not None:
                assert s.period_start is not None
                await self._email("downgrade_scheduled", self._key(f"downgrade-{s.change_seq}"),
                                  workflow.now(), plan=s.plan, new_plan=target.name, effective=day(s.period_end))
            self.changed = True
            return self._view()

    @downgrade.validator
    def _check_downgrade(self, req: PlanRequest) -> None:
        s = self.s
        self._validated(lambda: check_downgrade(CATALOGS.get(req.catalog_version), s.status, s.plan, req.plan,
                                                s.pending_seats or s.seats))

    @workflow.update
    async def change_seats(self, req: SeatsRequest) -> Subscription:
        async with self.lock:
            s = self.s
            seats = self._validated(
                lambda: check_change_seats(self._catalog(), s.status, s.plan, s.pending_plan, s.seats, req.seats))
            now = workflow.now()
            assert s.period_start is not None and s.period_end is not None
            if seats < s.seats and seats == s.pending_seats:
                return self._view()  # this reduction is already scheduled: a repeat changes nothing
            before = copy.deepcopy(s)
            s.change_seq += 1
            key = self._key(f"seats-{s.change_seq}")
            old = s.seats
            if seats == old:
                s.pending_seats = None  # back to the current count: withdraws a pending reduction
                self.changed = True
                return self._view()
            if seats > old:
                await self._in_update(UnfinishedChange("seats", now, s.change_seq, seats=seats), before)
                return self._view()
            s.pending_seats = seats  # fewer seats from the next period
            self._publish()
            await self._email("seats_changed", step_key(key, "email"), now, plan=s.plan, old_seats=old, seats=seats,
                              amount=None, effective=day(s.period_end))
            self.changed = True
            return self._view()

    @change_seats.validator
    def _check_change_seats(self, req: SeatsRequest) -> None:
        s = self.s
        self._validated(lambda: check_change_seats(self._catalog(), s.status, s.plan, s.pending_plan, s.seats,
                                                   req.seats))

    @workflow.update
    async def cancel(self) -> Subscription:
        async with self.lock:
            s = self.s
            self._check_cancel()
            now = workflow.now()
            if s.status == "past_due":  # nothing paid for this period: Free now
                await self._to_free(now, "the subscription was cancelled while a payment was past due")
            else:
                s.cancel_at_period_end = True
                s.change_seq += 1
                self._publish()
                assert s.period_start is not None
                await self._email("cancellation_scheduled", self._key(f"cancel-{s.change_seq}"),
                                  now, plan=s.plan, effective=day(s.period_end))
            self.changed = True
            return self._view()

    @cancel.validator
    def _validate_cancel(self) -> None:
        self._check_cancel()

    def _check_cancel(self) -> None:
        s = self.s
        self._check_finished()
        if s.status in (None, "free"):
            raise reject(InvalidRequest("there is no subscription to cancel: the organization is on Free"))
        if s.cancel_at_period_end:
            raise reject(InvalidRequest(f"the subscription is already cancelled for {day(s.period_end)}"))

    @workflow.update
    async def resume(self) -> Subscription:
        async with self.lock:
            s = self.s
            self._check_resume()
            s.cancel_at_period_end = False
            s.change_seq += 1
            self._publish()
            assert s.period_start is not None
            await self._email("resumed", self._key(f"resume-{s.change_seq}"),
                              workflow.now(), plan=s.plan, period_end=day(s.period_end))
            self.changed = True
            return self._view()

    @resume.validator
    def _validate_resume(self) -> None:
        self._check_resume()

    def _check_resume(self) -> None:
        self._check_finished()
        if not self.s.cancel_at_period_end:
            raise reject(InvalidRequest("the subscription is not cancelled: nothing to resume"))

    @workflow.update
    async def set_contract(self, req: ContractRequest) -> Subscription:
        """Set the organization's contract terms (or end them, with None): in force at once for what the ledger
        enforces (overage, the open-hold limit) and for this period's allocation (the new allocation less what
        was consumed, as an upgrade does); seat prices from the next charge."""
        async with self.lock:
            s = self.s
            self._check_contract(req)
            if req.terms == s.contract:
                return self._view()  # a repeat changes nothing
            before = copy.deepcopy(s)
            s.contract = req.terms
            if req.terms is not None and req.terms.overage_allowed:
                s.overage_rate_cents = req.terms.overage_rate_cents
            s.change_seq += 1
            await self._in_update(UnfinishedChange("contract", workflow.now(), s.change_seq), before)
            return self._view()

    @set_contract.validator
    def _check_contract(self, req: ContractRequest) -> None:
        s = self.s
        self._validated(lambda: check_changeable(s.status, "set a contract"))
        if req.terms is not None:
            terms = self._validated(lambda: check_contract(req.terms))
            if terms.payment_terms == "invoice" and s.interval == "month" and terms.net_days > MAX_NET_DAYS_MONTHLY:
                raise reject(InvalidRequest(
                    f"a monthly subscription's invoices are due within {MAX_NET_DAYS_MONTHLY} days (their dunning "
                    f"ends before the next invoice), not {terms.net_days}"))

    async def _apply_contract(self, now: datetime, seq: int) -> None:
        """A contract change's effects: the ledger's terms, then this period's allocation under them."""
        s = self.s
        await self._apply_terms(now)
        credits = self._allowance(s.plan, s.catalog_version, now)
        await CHANGE_PLAN.run(ChangePlan(s.org_id, self._key(f"contract-{seq}"), s.plan, now, credits=credits),
                              summary=f"Plan credits under the contract: {credits}", deadline=self.deadline)
        self._publish()

    @workflow.update
    async def migrate_catalog(self, req: MigrateRequest) -> Subscription:
        """An operator moves a grandfathered subscription to catalog `req.version`: its next charge is priced
        on it (the current period was paid at the old price). Refused while a contract locks prices."""
        async with self.lock:
            self._check_migrate(req)
            self.s.catalog_version = req.version
            self._publish()
            self.changed = True
            return self._view()

    @migrate_catalog.validator
    def _check_migrate(self, req: MigrateRequest) -> None:
        s = self.s
        self._validated(lambda: check_changeable(s.status, "migrate the catalog version"))
        catalog = self._validated(lambda: CATALOGS.get(req.version))
        self._validated(lambda: catalog.plan(s.plan))
        if in_term(s.contract, workflow.now()):
            assert s.contract is not None
            raise reject(InvalidRequest(f"{s.org_id}: its contract locks prices until {day(s.contract.term_end)}"))

    @workflow.query
    def state(self) -> Subscription:
        return self._view()

    @workflow.query
    def settled(self, at: datetime) -> bool:
        """True when nothing is running and nothing is due at `at` (the test kit waits for this)."""
        wake = self._next_wake()
        return not self.lock.locked() and workflow.all_handlers_finished() and (wake is None or wake > at)

    # -- helpers -------------------------------------------------------------------------------------

    def _validated(self, check: Any) -> Any:
        self._check_finished()
        try:
            return check()
        except BillingError as exc:
            raise reject(exc) from None

    def _check_finished(self) -> None:
        """No change starts while a step is in doubt (an open incident: a renewal Stripe may have charged, an
        update's unfinished change): it would be priced on that state, or undo what the step paid for."""
        i = self.s.incident
        if i is not None:
            raise reject(InvalidRequest(
                f"{self.s.org_id}: the subscription's {i.step} is being completed ({self._incident_text()}); "
                "try again once it is (BillingClient.retry_now runs it at once)"))

    def _key(self, purpose: str) -> str:
        """The business key of an effect in the current period: {org}:{period_start}:{purpose}."""
        s = self.s
        assert s.period_start is not None
        return period_key(s.org_id, s.period_start, purpose)

    # -- prices, allowances and terms: the catalog version the subscription is on, under its contract ------

    def _catalog(self, version: int | None = None) -> Catalog:
        return CATALOGS.get(self.s.catalog_version if version is None else version)

    def _terms(self, at: datetime) -> ContractTerms | None:
        """The contract's terms if in force at `at`: outside its term the plan's own apply."""
        return self.s.contract if in_term(self.s.contract, at) else None

    def _seat_cents(self, plan: str, version: int, at: datetime) -> int:
        """One seat for one period, priced on catalog `version`, or at the contract's price in its term."""
        catalog = self._catalog(version)
        return contract_seat_cents(self._terms(at), seat_price_cents(catalog, catalog.plan(plan), self.s.interval))

    def _allowance(self, plan: str, version: int, at: datetime) -> Decimal:
        """A period's plan credits: the plan's on catalog `version`, under the contract in its term."""
        return allowance(self._terms(at), self._catalog(version).plan(plan).credits)

    def _wallet_terms(self, at: datetime) -> WalletTerms:
        terms = self._terms(at)
        if terms is None:
            return WalletTerms()
        return WalletTerms(terms.overage_allowed, terms.overage_cap,
                           concurrency_limit(terms, self._catalog().plan(self.s.plan).max_concurrent_holds))

    async def _apply_terms(self, at: datetime) -> None:
        """What the ledger enforces of the contract (overage and its cap, the open-hold limit), as in force at
        `at`; the plan's own without one. Idempotent: setting the same terms again changes nothing."""
        self.effects_started = True
        await SET_TERMS.run(SetTerms(self.s.org_id, self._wallet_terms(at)),
                            summary=f"Wallet terms of {self.s.org_id}", deadline=self.deadline)

    async def _terms_for_period(self, now: datetime) -> None:
        """At a paid period's start: a contract whose term is over ends (the plan's own terms apply again);
        one in force is applied again (its limit follows the plan)."""
        s = self.s
        if s.contract is None:
            return
        assert s.period_start is not None
        if s.period_start >= s.contract.term_end:
            s.contract = None
        if s.contract is None or not s.contract.overage_allowed:
            s.overage_rate_cents = None  # this renewal invoiced what was left
        await self._apply_terms(s.period_start)

    async def _overage_lines(self, now: datetime) -> list[InvoiceLine]:
        """The ended period's overage as its own invoice line at the contracted rate. The ledger closes it
        under this renewal's key, once: a retried charge, a dunning retry or a re-run step reads the same
        figure, so the charge's amount never changes between attempts."""
        s = self.s
        if s.overage_rate_cents is None:
            return []
        key = self._key("overage")
        closed = await CLOSE_OVERAGE.run(CloseOverage(s.org_id, key, now), summary=f"Close the overage of {s.org_id}",
                                         deadline=self.deadline)
        self.effects_started = True
        if closed.credits <= 0:
            return []
        cents = overage_cents(closed.credits, s.overage_rate_cents)
        rate = number_text(s.overage_rate_cents)
        return [InvoiceLine(f"overage: {number_text(closed.credits)} credits at {rate} cents per credit", 1, cents,
                            cents)]

    # -- invoice payment terms: an open invoice, its due date, its dunning ----------------------------------

    def _invoice_wake(self, invoice: OpenInvoice) -> datetime:
        return invoice.due_at + timedelta(days=INVOICE_DUNNING_DAYS[invoice.stage])

    async def _issue_invoice(self, key: str, purpose: Purpose, lines: list[InvoiceLine], now: datetime,
                             due_at: datetime) -> None:
        """Invoice terms: the period's invoice is issued open, payable by `due_at`; service continues meanwhile
        (the period's credits are granted now), the subscription follows the invoice until it is paid."""
        s = self.s
        assert s.period_start is not None and s.period_end is not None
        self.effects_started = True
        issued = await ISSUE_INVOICE.run(IssueInvoice(self._charge_request(key, purpose, lines, now), due_at),
                                         summary=f"Issue an open invoice, due {day(due_at)}", deadline=self.deadline)
        amount = str(Money(issued.amount_cents, issued.currency))
        s.status, s.open_invoice = "active", OpenInvoice(key, issued.invoice_number, due_at, amount)
        self._publish()
        await self._terms_for_period(now)
        start, end = self._credit_window(now)
        await asyncio.gather(
            self._grant(s.plan, start, min(end, s.period_end), now, "credits"),
            self._email("invoice_issued", step_key(key, "invoice"), now, plan=s.plan, seats=s.seats, amount=amount,
                        invoice_number=issued.invoice_number, due=day(due_at),
                        period_start=day(s.period_start), period_end=day(s.period_end)),
        )

    async def _invoice_step(self, now: datetime) -> None:
        """The open invoice's next moment: paid, it is settled; else the due-date reminder, dunning's start, a
        reminder, and after the last the terms' consequence (Free)."""
        s = self.s
        invoice = s.open_invoice
        assert invoice is not None
        stage = invoice.stage
        step: InvoiceStep = "check" if stage >= 2 else ("due", "overdue")[stage]
        state = await self._invoice_state(invoice, step, now)
        if state.status == "paid":
            await self._invoice_settled(invoice, now)
            return
        if stage == len(INVOICE_DUNNING_DAYS) - 1:
            await self._to_free(now, f"invoice {invoice.number} ({invoice.amount}) was not paid "
                                     f"{INVOICE_DUNNING_DAYS[-1]} days after its due date")
            return
        invoice.stage += 1
        self._publish()
        context: dict[str, str | bool] = {"next_reminder": day(self._invoice_wake(invoice))}
        if stage > 0:  # dunning's reminders say whether it is the last
            context["final"] = invoice.stage == len(INVOICE_DUNNING_DAYS) - 1
        await self._email("invoice_due" if stage == 0 else "invoice_overdue", step_key(invoice.key, f"dunning-{stage}"),
                          now, plan=s.plan, invoice_number=invoice.number, amount=invoice.amount,
                          due=day(invoice.due_at), **context)

    async def _invoice_state(self, invoice: OpenInvoice, step: InvoiceStep, now: datetime) -> InvoiceState:
        return await INVOICE_STEP.run(MarkInvoice(self.s.org_id, invoice.key, step, now),
                                      summary=f"Invoice {invoice.number}: {step}", deadline=self.deadline)

    async def _invoice_settled(self, invoice: OpenInvoice, now: datetime) -> None:
        """The open invoice was paid: the subscription stops following it and sends the receipt."""
        s = self.s
        s.open_invoice = None
        self._publish()
        await self._email("receipt", step_key(invoice.key, "receipt"), now, plan=s.plan, seats=s.seats,
                          amount=invoice.amount, invoice_number=invoice.number, paid_by="transfer",
                          period_start=day(s.period_start), period_end=day(s.period_end))

    @workflow.update
    async def invoice_paid(self, number: str) -> Subscription:
        """The client recorded a payment of invoice `number` (BillingClient.mark_invoice_paid): the subscription
        reads it and, paid, stops following it (receipt sent). An invoice it does not follow changes nothing."""
        async with self.lock:
            invoice = self.s.open_invoice
            if invoice is not None and invoice.number == number:
                self.deadline = UPDATE_DEADLINE
                try:
                    state = await self._invoice_state(invoice, "check", workflow.now())
                    if state.status == "paid":
                        await self._invoice_settled(invoice, workflow.now())
                except ActivityError as err:
                    raise self._refusal(err) from None
                finally:
                    self.deadline = None
                self.changed = True
            return self._view()

    def _view(self) -> Subscription:
        s = self.s
        return Subscription(s.org_id, s.plan, s.seats, s.interval, s.status or "free", s.period_start, s.period_end,
                            s.trial_end, s.pending_plan, s.pending_seats, s.cancel_at_period_end, s.renewals,
                            self._incident_text(), s.catalog_version, s.contract)

    def _period_lines(self, plan: str, seats: int, start: datetime, end: datetime) -> list[InvoiceLine]:
        price = self._seat_cents(plan, self.s.catalog_version, start)
        label = "year" if self.s.interval == "year" else "month"
        return [InvoiceLine(f"{plan} x {seats} seats, {day(start)} to {day(end)} ({label})",
                            seats, price, price * seats)]

    def _money(self, lines: list[InvoiceLine]) -> Money:
        return Money(totals(lines, self.s.vat_rate).total_cents, self.s.currency)

    def _publish(self) -> None:
        """Search attributes and current details: what an operator reads in the Temporal UI."""
        s = self.s
        current = workflow.info().typed_search_attributes
        changed = [u for u in (
            ORG_ID.value_set(s.org_id),
            PLAN.value_set(s.plan),
            STATUS.value_set(s.status or "new"),
            PERIOD_END.value_set(s.period_end) if s.period_end else PERIOD_END.value_unset(),
            INCIDENT.value_set(s.incident.step) if s.incident else INCIDENT.value_unset(),
        ) if current.get(u.key) != u.value]
        if changed:  # continue-as-new carries them over: most renewals only move the period end
            workflow.upsert_search_attributes(changed)
        pending = []
        if s.pending_plan:
            pending.append(f"downgrade to {s.pending_plan}")
        if s.pending_seats:
            pending.append(f"{s.pending_seats} seats")
        if s.cancel_at_period_end:
            pending.append("cancel to Free")
        workflow.set_current_details(
            f"**{s.plan}** x {s.seats} seats, {s.interval}ly, **{s.status}**\n\n"
            f"period: {day(s.period_start)} to {day(s.period_end)}"
            + (f" (trial ends {day(s.trial_end)})" if s.status == "trialing" else "")
            + (f"\n\nat period end: {', '.join(pending)}" if pending else "")
            + (f"\n\nfailed charges: {s.failed_charges}" if s.failed_charges else "")
            + f"\n\nrenewals: {s.renewals}"
            + (f" · catalog version {s.catalog_version}" if s.catalog_version != 1 else "")
            + (f"\n\n**contract** {describe(s.contract, s.currency)}" if s.contract else "")
            + (f"\n\n**open invoice** {s.open_invoice.number} ({s.open_invoice.amount}), due "
               f"{day(s.open_invoice.due_at)}" + (", overdue" if s.open_invoice.stage > 1 else "")
               if s.open_invoice else "")
            + (f"\n\n**incident**: {self._incident_text()}" if s.incident else "")
        )

    def _incident_text(self) -> str | None:
        i = self.s.incident
        if i is None:
            return None
        return f"{i.step} failed (attempt {i.attempts}, next {stamp(i.retry_at)}): {i.error}"

    def _charge_request(self, key: str, purpose: Purpose, lines: list[InvoiceLine], now: datetime) -> ChargeRequest:
        s = self.s
        return ChargeRequest(s.org_id, key, purpose, lines, now, s.vat_rate, s.currency,
                             charge_summary(lines, s.vat_rate, s.currency))

    async def _charge(self, key: str, purpose: Purpose, lines: list[InvoiceLine], now: datetime,
                      *, raise_decline: bool = False) -> ChargeResult | None:
        """The charge's result, or None when the card was declined (raised instead if `raise_decline`)."""
        req = self._charge_request(key, purpose, lines, now)
        try:
            charged = await CHARGE.run(req, summary=req.summary, deadline=self.deadline)
            self.effects_started = True
            return charged
        except ActivityError as err:
            if not isinstance(from_failure(err), PaymentProviderRefused):
                self.effects_started = True  # in doubt: Stripe may have charged (a refusal is certain: nothing)
            cause = declined(err)
            if cause is not None:
                if raise_decline:
                    raise ApplicationError(cause.message, *cause.details, type="PaymentDeclined",
                                           non_retryable=True) from None
                return None
            raise

    async def _grant(self, plan: str, start: datetime, end: datetime | None, now: datetime, purpose: str,
                     *, grant: bool = True) -> None:
        s = self.s
        credits = self._allowance(plan, s.catalog_version, start)
        what = f"Grant {credits} {plan} credits" if grant else "Expire plan credits (period unpaid)"
        key = period_key(s.org_id, start, purpose)
        self.effects_started = True
        # The free plan's credits are per UTC day, from the catalog: the ledger takes no allocation for it.
        allocation = None if self._catalog().plan(plan).is_free else credits
        await START_PERIOD.run(StartPeriod(s.org_id, key, plan, start, end, now, grant, credits=allocation),
                               summary=f"{what}, {day(start)} to {day(end)}", deadline=self.deadline)

    async def _email(self, template: str, key: str, now: datetime, **context: str | int | bool | None) -> None:
        s = self.s
        await notify(SendEmail(s.org_id, key, template, s.email, now, {"org_id": s.org_id, **context}),
                             summary=f"Email {template} to the billing contact")

