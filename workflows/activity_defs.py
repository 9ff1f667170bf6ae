"""Every activity, declared once: its name, argument type, result type and whether it runs local.

Workflows call these declarations (`await CHARGE.run(req, summary=...)`), never a name string, and
the implementations register under `X.name` (activities/), so a rename is a refactor, not a grep;
tests/workflows/test_activity_defs.py checks each declaration against its implementation's signature.
Deterministic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError, RetryState

with workflow.unsafe.imports_passed_through():
    from models.auto_recharge_types import (
        BillingProfile,
        DisableRecharge,
        PlanRecharge,
        RechargeContext,
        SettleRecharge,
        SettleResult,
    )
    from models.billing_types import (
        ChargeRequest,
        ChargeResult,
        CustomerResult,
        EmailResult,
        EnsureCustomer,
        InvoiceState,
        IssueInvoice,
        MarkInvoice,
        SendEmail,
    )
    from models.errors import NON_RETRYABLE
    from models.ledger_types import (
        ChangePlan,
        CloseOverage,
        GrantPack,
        LedgerWriteResult,
        OverageClosed,
        SetTerms,
        StartPeriod,
    )
    from models.webhook_types import IncidentChange

A = TypeVar("A")
R = TypeVar("R")

ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1), non_retryable_error_types=NON_RETRYABLE)
TIMEOUT = timedelta(seconds=60)
SUMMARY_MAX_CHARS = 200  # the UI shows a line; Temporal caps summaries' size


@dataclass(frozen=True)
class ActivityDef(Generic[A, R]):
    """One activity. `local`: short, local and idempotent by key (ledger writes and reads, email), run
    as a local activity at no extra round trip through the server (a renewal is 2 workflow tasks, not
    4); Stripe stays a regular activity: a network call of unknown length, its retries visible in the UI."""

    name: str
    arg: Any      # the argument's type (a class, or a union for checks)
    result: Any   # the result's type, as the payload converter decodes it
    local: bool

    async def run(self, arg: A, *, summary: str, deadline: timedelta | None = None) -> R:
        """Run it from a workflow, retried by Temporal, with `summary` in the UI. `deadline`: give up
        retrying after this long (an ActivityError whose cause is a timeout) where the caller must not wait
        without bound: an update holding the subscription's lock, an email (failure model rules 2, 4)."""
        if self.local:
            # A local activity's deadline is its number of attempts: with schedule_to_close alone, SDK core
            # 1.35 kept retrying a refused SMTP connection past it (attempt 15 after ~10 min), and a
            # retry policy changes no command, so histories replay as they ran.
            policy = ACTIVITY_RETRY if deadline is None else _bounded(deadline)
            try:
                result = await workflow.execute_local_activity(
                    self.name, arg, result_type=self.result, start_to_close_timeout=TIMEOUT,
                    retry_policy=policy, summary=summary[:SUMMARY_MAX_CHARS])
            except ActivityError:
                raise
            except FailureError as exc:
                # A local activity out of attempts fails with its last error bare, where a regular one
                # fails with an ActivityError around it: one form for the callers (incidents, notify).
                raise ActivityError(f"local activity {self.name} failed", scheduled_event_id=0, started_event_id=0,
                                    identity="", activity_type=self.name, activity_id="",
                                    retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED) from exc
        else:
            result = await workflow.execute_activity(
                self.name, arg, result_type=self.result, start_to_close_timeout=TIMEOUT,
                schedule_to_close_timeout=deadline, retry_policy=ACTIVITY_RETRY,
                summary=summary[:SUMMARY_MAX_CHARS])
        return cast(R, result)


def attempts_within(deadline: timedelta, policy: RetryPolicy = ACTIVITY_RETRY) -> int:
    """How many attempts fit in `deadline` with the policy's backoff between them (at least one)."""
    assert policy.maximum_interval is not None
    attempts, spent, wait = 1, timedelta(0), policy.initial_interval
    while spent + wait <= deadline:
        spent += wait
        attempts += 1
        wait = min(wait * policy.backoff_coefficient, policy.maximum_interval)
    return attempts


def _bounded(deadline: timedelta) -> RetryPolicy:
    return replace(ACTIVITY_RETRY, maximum_attempts=attempts_within(deadline))


START_PERIOD = ActivityDef[StartPeriod, LedgerWriteResult]("ledger.start_period", StartPeriod, LedgerWriteResult,
                                                           local=True)
CHANGE_PLAN = ActivityDef[ChangePlan, LedgerWriteResult]("ledger.change_plan", ChangePlan, LedgerWriteResult,
                                                         local=True)
GRANT_PACK = ActivityDef[GrantPack, LedgerWriteResult]("ledger.grant_pack", GrantPack, LedgerWriteResult, local=True)
# The wallet terms a contract gives (overage, its cap, the open-hold limit); True when they changed.
SET_TERMS = ActivityDef[SetTerms, bool]("ledger.set_terms", SetTerms, bool, local=True)
# A period's overage taken to its invoice, once per key. A regular activity: the renewal's charge depends on its
# figure, and its attempts show in the UI.
CLOSE_OVERAGE = ActivityDef[CloseOverage, OverageClosed]("ledger.close_overage", CloseOverage, OverageClosed,
                                                         local=False)
PLAN_RECHARGE = ActivityDef[PlanRecharge, RechargeContext]("auto_recharge.plan", PlanRecharge, RechargeContext,
                                                           local=True)
SETTLE_RECHARGE = ActivityDef[SettleRecharge, SettleResult]("auto_recharge.settle", SettleRecharge, SettleResult,
                                                            local=True)
DISABLE_RECHARGE = ActivityDef[DisableRecharge, bool]("auto_recharge.disable", DisableRecharge, bool, local=True)
BILLING_PROFILE = ActivityDef[str, BillingProfile | None]("billing.profile", str, BillingProfile | None, local=True)
SEND_EMAIL = ActivityDef[SendEmail, EmailResult]("email.send", SendEmail, EmailResult, local=True)
ENSURE_CUSTOMER = ActivityDef[EnsureCustomer, CustomerResult]("stripe.ensure_customer", EnsureCustomer,
                                                              CustomerResult, local=False)
CHARGE = ActivityDef[ChargeRequest, ChargeResult]("stripe.charge", ChargeRequest, ChargeResult, local=False)
# Invoice payment terms (payments/open_invoices.py): database writes only, short and keyed: local.
ISSUE_INVOICE = ActivityDef[IssueInvoice, ChargeResult]("invoices.issue", IssueInvoice, ChargeResult, local=True)
INVOICE_STEP = ActivityDef[MarkInvoice, InvoiceState]("invoices.step", MarkInvoice, InvoiceState, local=True)
# An incident's webhook event (activities/webhooks.py IncidentActivities, registered on the workflows' worker:
# a local activity, as the other small database writes).
INCIDENT_EVENT = ActivityDef[IncidentChange, str]("webhooks.incident_event", IncidentChange, str, local=True)

ALL: tuple[ActivityDef[Any, Any], ...] = (
    START_PERIOD, CHANGE_PLAN, GRANT_PACK, SET_TERMS, CLOSE_OVERAGE, PLAN_RECHARGE, SETTLE_RECHARGE, DISABLE_RECHARGE,
    BILLING_PROFILE,
    SEND_EMAIL, ENSURE_CUSTOMER, CHARGE, ISSUE_INVOICE, INVOICE_STEP, INCIDENT_EVENT,
)
