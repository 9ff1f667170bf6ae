"""What the lifecycle guarantees beyond the happy paths: exactly once under a crash, duplicates and bad
requests change nothing, bounded history, determinism (replay), and what operators see."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from models.errors import InvalidRequest
from models.keys import subscription_workflow_id as workflow_id
from temporal_client import DATA_CONVERTER
from testkit import TestKit, start_testkit
from tests.support.histories import run_histories
from tests.support.keys import stamp
from workflows.subscription import SubscriptionWorkflow

EMAIL = "billing@acme.test"
WORKFLOW_TASK_EVENTS = {EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED}
RECORDED = Path(__file__).with_name("histories")


async def past(kit: TestKit, moment: datetime | None, plus: timedelta = timedelta(minutes=1)) -> None:
    assert moment is not None
    await kit.advance(moment + plus - kit.now())




async def test_a_crash_after_stripe_charged_makes_no_second_charge(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    key = f"{org}:{stamp(first.period_end)}:renewal"
    kit.payments.crash_after_stripe.add(key)  # the activity dies after Stripe confirmed, before it records
    await past(kit, first.period_end)
    assert key not in kit.payments.crash_after_stripe, "the crash did not fire"
    assert (await kit.billing.subscription(org)).renewals == 1
    assert [(c.key, c.status) for c in kit.charges(org)][1:] == [(key, "succeeded")]
    assert len(await kit.payments.stripe_payment_intents(org)) == 2  # one per charge, none twice
    assert len(await kit.billing.invoices(org)) == 2
    assert [m.template for m in kit.emails(org)] == ["receipt", "receipt"]


async def test_a_duplicate_subscribe_is_refused_and_changes_nothing(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    with pytest.raises(InvalidRequest, match="already has a subscription"):
        await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    assert len(kit.charges(org)) == 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda b, o: b.upgrade(o, plan="platinum"), "unknown plan"),
    (lambda b, o: b.upgrade(o, plan="starter"), "not an upgrade"),
    (lambda b, o: b.downgrade(o, plan="enterprise"), "not a downgrade"),
    (lambda b, o: b.downgrade(o, plan="starter"), "do not fit"),
    (lambda b, o: b.change_seats(o, seats=26), "1 to 25 seats"),
    (lambda b, o: b.change_seats(o, seats=0), "1 to 25 seats"),
    (lambda b, o: b.resume(o), "not cancelled"),
])
async def test_bad_requests_are_refused_before_they_enter_history(
    kit: TestKit, org: str, change: object, message: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=6, email=EMAIL)
    handle = kit.env.client.get_workflow_handle(workflow_id(org))
    before = (await handle.fetch_history()).events
    with pytest.raises(InvalidRequest, match=message):
        await change(kit.billing, org)  # type: ignore[operator]
    # The real server drops the rejecting workflow task too (tests/scenarios/test_dev_server.py checks the length);
    # the time-skipping server keeps that task's 3 events, but nothing else: no update, no activity.
    added = (await handle.fetch_history()).events[len(before):]
    assert {e.event_type for e in added} <= WORKFLOW_TASK_EVENTS
    sub = await kit.billing.subscription(org)
    assert (sub.plan, sub.seats, sub.pending_plan, sub.cancel_at_period_end) == ("pro", 6, None, False)


async def test_bad_subscribe_input_starts_nothing(kit: TestKit, org: str) -> None:
    with pytest.raises(InvalidRequest, match="seats"):
        await kit.billing.subscribe(org, plan="starter", seats=9, email=EMAIL)
    with pytest.raises(InvalidRequest, match="no subscription"):
        await kit.billing.subscription(org)
    with pytest.raises(InvalidRequest, match="no subscription"):
        await kit.billing.cancel(org)


async def test_24_renewals_keep_every_run_small(org: str) -> None:
    # A kit of its own: on the shared one, each of the 24 months renews every other test's subscriptions too
    # (about 160 by then: 3,840 sandboxed renewals, most of the suite's time).
    async with start_testkit() as kit:
        sub = await kit.billing.subscribe(org, plan="starter", seats=1, email=EMAIL)
        for _ in range(24):
            await past(kit, sub.period_end)
            sub = await kit.billing.subscription(org)
        assert sub.renewals == 24 and sub.status == "active"
        assert len(kit.charges(org)) == 25
        runs = await run_histories(kit.env.client, org)
    assert len(runs) == 25  # continue-as-new at every renewal
    assert max(len(h.events) for h in runs) < 60, [len(h.events) for h in runs]


async def test_operators_see_plan_status_and_period_end_as_search_attributes(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=2, email=EMAIL)
    await kit.billing.upgrade(org, plan="enterprise")
    desc = await kit.env.client.get_workflow_handle(workflow_id(org)).describe()
    attrs = desc.search_attributes
    assert attrs["BillingOrgId"] == [org] and attrs["BillingPlan"] == ["enterprise"]
    assert attrs["BillingStatus"] == ["active"]
    assert attrs["BillingPeriodEnd"] == [sub.period_end]
    assert not any(EMAIL in str(v) for v in attrs.values())  # no email addresses in search attributes


async def test_histories_of_the_main_scenarios_replay(kit: TestKit, org: str) -> None:
    """Determinism: the histories this code makes now, and the ones recorded before (tests/scenarios/histories/),
    replay without a non-determinism error."""
    sub = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    await kit.billing.debit(org, action="insight", tier="pro", quantity=10, idempotency_key="k1")
    await kit.billing.upgrade(org, plan="enterprise")
    await kit.billing.change_seats(org, seats=5)
    await kit.billing.downgrade(org, plan="pro")
    await kit.billing.change_seats(org, seats=4)
    await past(kit, sub.period_end)
    await kit.billing.cancel(org)
    await kit.billing.resume(org)
    await kit.use_card(org, "declined")
    sub = await kit.billing.subscription(org)
    await past(kit, sub.period_end, timedelta(days=6))
    assert (await kit.billing.subscription(org)).status == "free"
    fresh = await run_histories(kit.env.client, org)
    if os.environ.get("RECORD_HISTORIES"):  # refresh the recorded set: RECORD_HISTORIES=1 pytest -k replay
        RECORDED.mkdir(exist_ok=True)
        for n, history in enumerate(fresh):
            (RECORDED / f"main-scenario-run{n:02d}.json").write_text(json.dumps(
                {"workflow_id": "subscription:main-scenario", "history": history.to_json_dict()}, indent=1))
    recorded = [json.loads(p.read_text()) for p in sorted(RECORDED.glob("*.json"))]
    assert recorded, "no recorded histories under tests/scenarios/histories/"
    histories = fresh + [WorkflowHistory.from_json(r["workflow_id"], r["history"]) for r in recorded]
    replayer = Replayer(workflows=[SubscriptionWorkflow], data_converter=DATA_CONVERTER)
    results = await replayer.replay_workflows(_each(histories), raise_on_replay_failure=False)
    assert results.replay_failures == {}
    assert len(fresh) == 6 and len(recorded) == 6


async def _each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history
