"""No workflow dies of an error (docs/product.md, failure model rule 3): a due step that fails for good
is recorded as an incident, shown to operators, and run again on a backoff or when an operator asks,
without losing the subscription's place."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus

from models.errors import InvalidRequest, PaymentProviderRefused, ServiceUnavailable
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


async def test_an_upgrade_stripe_refuses_changes_nothing(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    assert sub.period_start is not None
    key = f"{org}:{stamp(sub.period_start)}:upgrade-1"
    kit.payments.refuse_charges.add(key)
    try:
        with pytest.raises(PaymentProviderRefused):
            await kit.billing.upgrade(org, plan="pro")
    finally:
        kit.payments.refuse_charges.discard(key)
    after = await kit.billing.subscription(org)
    assert (after.plan, after.incident) == ("starter", None)
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]
    assert (await kit.billing.balance(org)).plan_name == "starter"  # the ledger's plan unchanged
    # The refused change number is not reused: the next upgrade goes through under its own key.
    assert (await kit.billing.upgrade(org, plan="pro")).plan == "pro"
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "upgrade"]


async def test_an_upgrade_charged_but_unanswered_is_completed_by_the_subscription(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    assert sub.period_start is not None
    key = f"{org}:{stamp(sub.period_start)}:upgrade-1"
    kit.payments.lose_after_stripe.add(key)  # Stripe charged; the answer never comes back
    try:
        with pytest.raises(ServiceUnavailable, match="completes it on its own"):
            await kit.billing.upgrade(org, plan="pro")
        held = await kit.billing.subscription(org)
        assert held.plan == "starter" and held.incident is not None and held.incident.startswith("upgrade failed")
        # No other change starts on a state in doubt.
        with pytest.raises(InvalidRequest, match="being completed"):
            await kit.billing.change_seats(org, seats=2)
    finally:
        kit.payments.lose_after_stripe.discard(key)
    done = await kit.billing.retry_now(org)
    assert (done.plan, done.incident) == ("pro", None)
    # One PaymentIntent for the key (found again, not charged twice), one invoice, the new plan's credits.
    charges = kit.charges(org)
    assert [(c.purpose, c.status) for c in charges] == [("subscription", "succeeded"), ("upgrade", "succeeded")]
    assert len(await kit.payments.stripe_payment_intents(org)) == 2
    assert len(await kit.billing.invoices(org)) == 2
    assert (await kit.billing.balance(org)).plan_name == "pro"
    await kit.settle()
    assert [e.template for e in kit.emails(org)].count("upgrade_confirmed") == 1
