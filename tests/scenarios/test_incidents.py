"""No workflow dies of an error (docs/product.md, failure model rule 3): a due step that fails for good
is recorded as an incident, shown to operators, and run again on a backoff or when an operator asks,
without losing the subscription's place."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import WorkflowExecutionStatus

from models.keys import subscription_workflow_id
from testkit import TestKit
from tests.support.keys import stamp
from workflows.common import INCIDENT

EMAIL = "billing@acme.test"


async def test_a_renewal_stripe_refuses_is_an_incident_retried_until_it_goes_through(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    key = f"{org}:{stamp(sub.period_end)}:renewal"
    kit.payments.refuse_charges.add(key)  # Stripe answers the renewal's charge with a 400, for good
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())  # within the 1-min backoff
        held = await kit.billing.subscription(org)
        # Its place kept: the same period, no renewal counted, nothing charged twice or granted unpaid.
        assert (held.status, held.renewals, held.period_end) == ("active", 0, sub.period_end)
        assert held.incident is not None and "renewal failed (attempt 1" in held.incident
        assert "PaymentProviderRefused" in held.incident
        handle = kit.env.client.get_workflow_handle(subscription_workflow_id(org))
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
        assert desc.typed_search_attributes.get(INCIDENT) == "renewal"  # operators search for it
        await kit.advance(timedelta(minutes=1, seconds=30))  # the backoff's first retry: refused again
        assert "attempt 2" in ((await kit.billing.subscription(org)).incident or "")
        assert [c.purpose for c in kit.charges(org)] == ["subscription"]
    finally:
        kit.payments.refuse_charges.discard(key)
    # Fixed (Stripe accepts again): an operator does not wait for the next backoff.
    done = await kit.billing.retry_now(org)  # answers once the step went through
    assert (done.status, done.renewals, done.incident) == ("active", 1, None)
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "renewal"]
    desc = await kit.env.client.get_workflow_handle(subscription_workflow_id(org)).describe()
    assert desc.typed_search_attributes.get(INCIDENT) is None
