"""What every billing workflow shares: search attributes, refusals and declines. Deterministic, no I/O.
Activities are declared in workflows/activity_defs.py; keys and timestamps are built in models/keys.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activity_defs import CHARGE, GRANT_PACK, INCIDENT_EVENT, SEND_EMAIL

with workflow.unsafe.imports_passed_through():
    from models.billing_types import ChargeRequest, ChargeResult, SendEmail
    from models.errors import BillingError, from_failure, to_application_error
    from models.ledger_types import GrantPack, LedgerWriteResult
    from models.subscription_rules import incident_backoff
    from models.webhook_types import INCIDENT_WORKFLOWS, IncidentChange, redact_error

ORG_ID = SearchAttributeKey.for_keyword("BillingOrgId")
PLAN = SearchAttributeKey.for_keyword("BillingPlan")
STATUS = SearchAttributeKey.for_keyword("BillingStatus")
PERIOD_END = SearchAttributeKey.for_datetime("BillingPeriodEnd")
INCIDENT = SearchAttributeKey.for_keyword("BillingIncident")  # the failed step, while an incident is open
SEARCH_ATTRIBUTES = (ORG_ID, PLAN, STATUS, PERIOD_END, INCIDENT)

T = TypeVar("T")

# How long a workflow waits on an email before it leaves it to the outbox relay (mail/mailer.py
# RELAY_AFTER is longer): an SMTP server that is down never holds up a renewal or an update.
NOTIFY_DEADLINE = timedelta(minutes=1)
# Incidents became webhook events (incident.opened, incident.resolved) with this patch: a run that had not
# reached it replays as it ran, and writes no incident event for the rest of that run.
INCIDENT_EVENTS_PATCH = "incident-events"
# How long a workflow tries to write an incident's event before it goes on without it (failure model rule 2,
# as `notify`): an incident is often the database being away, and the step's retry must not wait on it.
INCIDENT_EVENT_DEADLINE = timedelta(seconds=30)


def reject(exc: BillingError) -> ApplicationError:
    """A refusal the caller gets back typed (models/errors.py turns it back into the BillingError)."""
    return to_application_error(exc)


def declined(err: ActivityError) -> ApplicationError | None:
    """The PaymentDeclined behind a failed activity, None when it failed otherwise."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == "PaymentDeclined":
        return cause
    return None


def failure_text(err: ActivityError) -> str:
    """What an operator reads of a failed step: the error's type and message (at most 500 characters)."""
    cause = err.cause
    text = f"{cause.type}: {cause.message}" if isinstance(cause, ApplicationError) else str(cause or err)
    return text[:500]


def failure_parts(err: ActivityError) -> tuple[str, str]:
    """A failed step's error as its type and message (an incident event's `error_type`, `error_message`)."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return cause.type or "ApplicationError", cause.message
    if cause is None:
        return type(err).__name__, str(err)
    return type(cause).__name__, str(cause)


async def write_incident_event(change: IncidentChange) -> bool:
    """Write an incident's webhook event (a local activity, keyed by the incident: a repeat writes nothing
    more); True once it is written. Never fails the caller, nor holds it up past INCIDENT_EVENT_DEADLINE: a
    database that is away is logged and counted, and the caller goes on (IncidentEvents tries again later).
    Nothing at all in a run from before INCIDENT_EVENTS_PATCH."""
    if not workflow.patched(INCIDENT_EVENTS_PATCH):
        return False
    what = "opened" if change.opened else "resolved"
    try:
        await INCIDENT_EVENT.run(change, summary=f"Webhook event incident.{what}: {change.step}",
                                 deadline=INCIDENT_EVENT_DEADLINE)
        return True
    except ActivityError as err:
        workflow.logger.warning("incident.%s event of %s (%s) not written: %s", what, change.org_id, change.step,
                                failure_text(err))
        workflow.metric_meter().create_counter(
            "billing_incident_events_failed", "incident webhook events a workflow could not write").add(
            1, {"step": change.step})
        return False


@dataclass
class IncidentEvents:
    """One incident's webhook events: incident.opened when it opens (tried again at each failed retry until
    written: an incident is often the database being away), incident.resolved when the step goes through,
    after the opening if that was never written. Keyed by the organization, the step, `since` and `subject`
    (models/webhook_types.py incident_key), so each is written once whatever retries or replays."""

    org_id: str
    step: str
    since: datetime
    subject: str | None
    error: tuple[str, str]         # the first failure's type and message (redacted when written)
    opened_written: bool = False

    def _change(self, resolved_at: datetime | None = None) -> IncidentChange:
        kind = workflow.info().workflow_type
        error_type, message = self.error
        return IncidentChange(self.org_id, INCIDENT_WORKFLOWS.get(kind, kind), self.step, self.since, self.subject,
                              None if resolved_at else error_type, None if resolved_at else redact_error(message),
                              resolved_at)

    async def opened(self) -> None:
        if not self.opened_written:
            self.opened_written = await write_incident_event(self._change())

    async def resolved(self, at: datetime) -> None:
        await self.opened()
        await write_incident_event(self._change(resolved_at=at))


async def notify(req: SendEmail, *, summary: str) -> None:
    """Email the billing contact; never fails the caller (failure model rule 2). The mailer records a
    refusal for good on the outbox row and answers; an SMTP server still unreachable after NOTIFY_DEADLINE
    leaves the rendered email to the outbox relay, which sends it once the server is back."""
    try:
        await SEND_EMAIL.run(req, summary=summary, deadline=NOTIFY_DEADLINE)
    except ActivityError as err:
        workflow.logger.warning("email %s (%s) of %s left to the outbox relay: %s", req.key, req.template,
                                req.org_id, failure_text(err))
        workflow.metric_meter().create_counter(
            "billing_notifications_deferred", "emails a workflow left to the outbox relay").add(
            1, {"template": req.template})


async def _until_done(attempt: Callable[[], Awaitable[T]], *, org_id: str, step: str, what: str, subject: str,
                      certain: Callable[[ActivityError], bool] = lambda err: False) -> T:
    """Run `attempt` until it succeeds, or fails `certain`ly (raised as it came). Every other failure is an
    incident (log, billing_incidents counter, search attribute BillingIncident, current details, the webhook
    event incident.opened), tried again on the backoff of models/subscription_rules.py (1 min doubling to
    1 h): the attempt is keyed by `subject` (its business key), so every try is the same effect. The incident
    is resolved (incident.resolved) when the attempt succeeds or fails certainly."""
    failures = 0
    events: IncidentEvents | None = None
    while True:
        try:
            result = await attempt()
        except ActivityError as err:
            if certain(err):
                if events is not None:  # in doubt until now: the certain answer ends the incident
                    if workflow.patched(INCIDENT_EVENTS_PATCH):
                        workflow.upsert_search_attributes([INCIDENT.value_unset()])
                    await events.resolved(workflow.now())
                raise
            failures += 1
            wait, error = incident_backoff(failures), failure_text(err)
            workflow.logger.warning("incident of %s: %s failed (attempt %d), next try in %s: %s", org_id, step,
                                    failures, wait, error)
            workflow.metric_meter().create_counter("billing_incidents", "steps that failed for good").add(
                1, {"step": step})
            workflow.upsert_search_attributes([INCIDENT.value_set(step)])
            workflow.set_current_details(f"**incident**: {what} (attempt {failures}), next try in {wait}: {error}")
            if events is None:
                events = IncidentEvents(org_id, step, workflow.now(), subject, failure_parts(err))
            await events.opened()
            await workflow.sleep(wait, summary=f"{step}: next try")
            continue
        if failures:
            workflow.upsert_search_attributes([INCIDENT.value_unset()])
            assert events is not None
            await events.resolved(workflow.now())
        return result


async def charge_until_answered(req: ChargeRequest, *, summary: str, step: str) -> ChargeResult:
    """Charge, and keep at it until Stripe's answer is certain (failure model rule 2): a success, or a typed
    refusal (a decline, PaymentProviderRefused, a bad request: nothing was charged), raised as the
    ActivityError it came in. Any other failure leaves the charge in doubt (Stripe may have charged): an
    incident, retried under the same key."""
    return await _until_done(lambda: CHARGE.run(req, summary=summary), org_id=req.org_id, step=step,
                             what=f"the charge {req.key} is in doubt", subject=req.key,
                             certain=lambda err: from_failure(err) is not None)


async def grant_paid_pack(grant: GrantPack, *, summary: str) -> LedgerWriteResult:
    """Grant the credits a successful charge paid for (a pack, an auto-recharge), however long it takes
    (failure model rule 2): a grant that fails even for good is an incident, tried again under its key."""
    return await _until_done(lambda: GRANT_PACK.run(grant, summary=summary), org_id=grant.org_id,
                             step="paid grant", what=f"{grant.credits} paid credits not granted yet",
                             subject=grant.key)
