"""What every billing workflow shares: how activities are called (by name, retried by Temporal, typed
business errors non-retryable), business keys' timestamps, and refusals. Deterministic, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.errors import BillingError

ORG_ID = SearchAttributeKey.for_keyword("BillingOrgId")
PLAN = SearchAttributeKey.for_keyword("BillingPlan")
STATUS = SearchAttributeKey.for_keyword("BillingStatus")
PERIOD_END = SearchAttributeKey.for_datetime("BillingPeriodEnd")

NON_RETRYABLE = ["PaymentDeclined", "InvalidRequest", "IdempotencyConflict", "UnknownOrganization"]
# Ledger writes, reads and emails are short, local and idempotent by key: run as local activities they
# cost no extra round trips through the server (a renewal is 2 workflow tasks, not 4). Stripe stays a
# regular activity: a network call of unknown length, with its retries visible in the UI.
LOCAL_ACTIVITIES = frozenset({
    "ledger.start_period", "ledger.change_plan", "ledger.grant_pack", "email.send",
    "auto_recharge.plan", "auto_recharge.settle", "auto_recharge.disable", "billing.profile",
})
ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1), non_retryable_error_types=NON_RETRYABLE)


def stamp(t: datetime) -> str:
    """A timestamp as business keys spell it: 2026-01-15T09:30:00Z."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def day(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d")


def reject(exc: BillingError) -> ApplicationError:
    """A refusal the caller gets back typed (BillingClient maps the type to the BillingError)."""
    return ApplicationError(exc.message, type=type(exc).__name__, non_retryable=True)


async def run_activity(name: str, arg: Any, result: Any, *, summary: str) -> Any:
    """Run activity `name` (local when short and local, see LOCAL_ACTIVITIES) with `summary` in the UI."""
    if name in LOCAL_ACTIVITIES:
        return await workflow.execute_local_activity(
            name, arg, result_type=result, start_to_close_timeout=timedelta(seconds=60),
            retry_policy=ACTIVITY_RETRY, summary=summary[:200])
    return await workflow.execute_activity(
        name, arg, result_type=result, start_to_close_timeout=timedelta(seconds=60),
        retry_policy=ACTIVITY_RETRY, summary=summary[:200])


def declined(err: ActivityError) -> ApplicationError | None:
    """The PaymentDeclined behind a failed activity, None when it failed otherwise."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == "PaymentDeclined":
        return cause
    return None
