"""What every billing workflow shares: search attributes, refusals and declines. Deterministic, no I/O.
Activities are declared in workflows/activity_defs.py; keys and timestamps are built in models/keys.py."""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.errors import BillingError, to_application_error

ORG_ID = SearchAttributeKey.for_keyword("BillingOrgId")
PLAN = SearchAttributeKey.for_keyword("BillingPlan")
STATUS = SearchAttributeKey.for_keyword("BillingStatus")
PERIOD_END = SearchAttributeKey.for_datetime("BillingPeriodEnd")
INCIDENT = SearchAttributeKey.for_keyword("BillingIncident")  # the failed step, while an incident is open
SEARCH_ATTRIBUTES = (ORG_ID, PLAN, STATUS, PERIOD_END, INCIDENT)


def reject(exc: BillingError) -> ApplicationError:
    """A refusal the caller gets back typed (models/errors.py turns it back into the BillingError)."""
    return to_application_error(exc)


def declined(err: ActivityError) -> ApplicationError | None:
    """The PaymentDeclined behind a failed activity, None when it failed otherwise."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == "PaymentDeclined":
        return cause
    return None
