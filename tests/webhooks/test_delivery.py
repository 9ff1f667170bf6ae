"""Webhook delivery end to end on the test kit: events written by their causes, signed, delivered in order."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from models.errors import UsageGuardPaused
from models.webhook_types import EVENT_TYPES, delivery_workflow_id
from temporal_client import DATA_CONVERTER
from testkit import TASK_QUEUE, TestKit
from tests.webhooks.conftest import Register, db_events, endpoint_row
from tests.webhooks.receiver import Receiver
from webhooks.dispatcher import WebhookDispatcher
from workflows.webhook_delivery import WebhookDeliveryWorkflow


async def test_a_subscriptions_events_reach_its_endpoint_signed_and_in_order(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    await kit.billing.open_wallet(org)
    endpoint = await register("life", list(EVENT_TYPES), org_id=org)
    await kit.billing.subscribe(org, plan="pro", seats=2, email="ops@acme.test", trial_days=7)
    await kit.settle()
    await kit.advance(timedelta(days=8))
    await kit.billing.cancel(org)
    await kit.settle()
    got = receiver.acked("life")
    types = [p["type"] for p in got]
    assert types == ["subscription.created", "payment.succeeded", "invoice.issued", "subscription.changed",
                     "subscription.cancelled"], types
    assert got[0]["data"]["status"] == "trialing" and got[3]["data"]["change"] == "trial_converted"
    assert [(p["seq"], p["id"], p["type"]) for p in got] == db_events(kit, org)
    assert all(d.payload is not None for d in receiver.attempts("life"))  # every signature verified
    assert endpoint_row(kit, endpoint["id"])["delivered_seq"] >= got[-1]["seq"]


async def _cause_events(kit: TestKit, org: str) -> None:
    """Events of one organization, each from a different cause: a subscription (its payment, invoice and
    subscription.created), debits crossing 80% and 100% of the plan credits and a low-balance threshold (alerts),
    an upgrade (its payment, invoice and subscription.changed)."""
    await kit.billing.subscribe(org, plan="starter", seats=1, email="ops@acme.test")
    await kit.billing.set_low_balance_alert(org, Decimal("100"))
    await kit.billing.debit(org, action="insight", tier="smart", quantity=48, idempotency_key="a")  # 80%
    await kit.billing.debit(org, action="insight", tier="smart", quantity=12, idempotency_key="b")  # 100%, low
    await kit.billing.upgrade(org, plan="pro")


async def test_an_endpoint_that_fails_then_recovers_gets_each_event_once_in_the_order_of_its_cause(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    await kit.billing.open_wallet(org)
    endpoint = await register("flaky", list(EVENT_TYPES), org_id=org)
    receiver.status["flaky"] = 500
    await _cause_events(kit, org)
    await kit.settle()
    expected = db_events(kit, org)
    assert [t for _, _, t in expected] == [
        "payment.succeeded", "invoice.issued", "subscription.created", "credits.usage_80", "credits.usage_100",
        "credits.low_balance", "payment.succeeded", "invoice.issued", "subscription.changed"]
    # Failing: only the first event was tried (never a later one before it), nothing acknowledged, the
    # failure recorded on the endpoint.
    failed = receiver.attempts("flaky")
    assert failed and {d.webhook_id for d in failed} == {expected[0][1]} and not receiver.acked("flaky")
    row = endpoint_row(kit, endpoint["id"])
    assert row["failing_since"] is not None and row["failed_attempts"] >= 1
    assert row["last_error"].startswith("HTTP 500")
    assert row["enabled"]

    receiver.status["flaky"] = 200  # it recovers: the retries' backoff (10 s, doubling) runs as time moves
    await kit.advance(timedelta(hours=1))
    got = receiver.acked("flaky")
    assert [(p["seq"], p["id"], p["type"]) for p in got] == expected  # each once, in seq order
    assert len({p["id"] for p in got}) == len(expected)
    assert got[3]["data"]["percent"] == 80 and got[4]["data"]["percent"] == 100
    assert got[3]["data"]["period_start"] == got[4]["data"]["period_start"] and "Z" in got[3]["data"]["period_start"]
    assert got[5]["data"]["threshold"] == "100" and Decimal(got[5]["data"]["available"]) < 100
    # Every attempt of an event carried the same webhook-id; the failed ones were the first event's only.
    assert all(d.webhook_id == d.payload["id"] for d in receiver.attempts("flaky") if d.payload)
    row = endpoint_row(kit, endpoint["id"])
    assert (row["failing_since"], row["failed_attempts"], row["last_error"]) == (None, 0, None)
    assert row["delivered_seq"] >= expected[-1][0]


async def test_an_endpoint_failing_for_days_is_disabled_its_owner_emailed_and_it_catches_up_once_enabled(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    await kit.billing.open_wallet(org)
    endpoint = await register("down", ["subscription.created", "invoice.issued"], org_id=org,
                              owner_email="hooks@acme.test")
    receiver.status["down"] = 503
    await kit.billing.subscribe(org, plan="pro", seats=1, email="ops@acme.test")
    await kit.advance(timedelta(days=2))
    row = endpoint_row(kit, endpoint["id"])
    assert row["enabled"] and row["failed_attempts"] > 5  # backing off, up to an hour between attempts
    assert not [m for m in kit.emails(org) if m.template == "webhook_disabled"]

    await kit.advance(timedelta(days=2))
    row = endpoint_row(kit, endpoint["id"])
    assert (row["enabled"], row["disabled_reason"]) == (False, "failing")
    assert row["disabled_at"] - row["failing_since"] >= timedelta(days=3)
    notices = [m for m in kit.emails(org) if m.template == "webhook_disabled"]
    assert len(notices) == 1 and notices[0].to == "hooks@acme.test" and endpoint["id"] in notices[0].text
    tried = len(receiver.attempts("down"))
    await kit.advance(timedelta(days=1))
    assert len(receiver.attempts("down")) == tried  # disabled: no more attempts
    assert len([m for m in kit.emails(org) if m.template == "webhook_disabled"]) == 1

    # Enabled again once it answers: it gets what it missed, in order, once each.
    receiver.status["down"] = 200
    platform = await kit.api_key("platform")
    async with httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {platform}"}) as http:
        r = await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/enable")
    assert r.status_code == 200 and r.json()["enabled"] and r.json()["failed_attempts"] == 0, r.text
    await kit.settle()
    got = receiver.acked("down")
    assert [p["type"] for p in got] == ["invoice.issued", "subscription.created"]
    assert [p["id"] for p in got] == [i for _, i, t in db_events(kit, org) if t in ("invoice.issued",
                                                                                      "subscription.created")]


RECORDED = Path(__file__).with_name("histories")


async def test_delivery_histories_replay(kit: TestKit, org: str, receiver: Receiver, register: Register) -> None:
    """Determinism: a delivery workflow's history made now (a failing call retried, pokes, a recovery) and the
    ones recorded before (tests/webhooks/histories/) replay without a non-determinism error."""
    await kit.billing.open_wallet(org)
    endpoint = await register("replay", list(EVENT_TYPES), org_id=org)
    receiver.status["replay"] = 500
    await kit.billing.subscribe(org, plan="pro", seats=1, email="ops@acme.test")
    await kit.settle()
    await kit.billing.upgrade(org, plan="enterprise")
    await kit.settle()
    receiver.status["replay"] = 200
    await kit.advance(timedelta(hours=1))
    assert len(receiver.acked("replay")) == len(db_events(kit, org)) == 6
    handle = kit.env.client.get_workflow_handle(delivery_workflow_id(endpoint["id"]))
    with kit.env.auto_time_skipping_disabled():  # waiting on a result must not move the shared kit's clock
        await handle.result()  # caught up: the run ended
    fresh = await handle.fetch_history()
    if os.environ.get("RECORD_HISTORIES"):  # refresh the recorded set: RECORD_HISTORIES=1 pytest -k replay
        RECORDED.mkdir(exist_ok=True)
        (RECORDED / "fail-then-recover.json").write_text(json.dumps(
            {"workflow_id": "webhook:recorded", "history": fresh.to_json_dict()}, indent=1))
    recorded = [json.loads(p.read_text()) for p in sorted(RECORDED.glob("*.json"))]
    assert recorded, "no recorded histories under tests/webhooks/histories/"
    histories = [fresh, *(WorkflowHistory.from_json(r["workflow_id"], r["history"]) for r in recorded)]
    replayer = Replayer(workflows=[WebhookDeliveryWorkflow], data_converter=DATA_CONVERTER)
    for history in histories:
        await replayer.replay_workflow(history)


async def _drain_to(kit: TestKit, org: str, left: int, key: str) -> None:
    available = (await kit.billing.balance(org)).available
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=available - left, idempotency_key=key)
    await kit.settle()


async def test_auto_recharges_events_reach_the_endpoint(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    await kit.billing.open_wallet(org)
    await register("recharge", ["auto_recharge.succeeded", "auto_recharge.limit_reached", "auto_recharge.disabled",
                                "payment.failed"], org_id=org)
    card = await kit.payments.create_card("4242424242424242")
    await kit.billing.buy_credits(org, pack="500", idempotency_key="first", email="ops@acme.test", payment_method=card)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500", spending_limit_cents=2500)
    await _drain_to(kit, org, 20, "d1")   # one pack bought
    await _drain_to(kit, org, 20, "d2")   # this month's 25.00 spent: the limit
    got = receiver.acked("recharge")
    assert [p["type"] for p in got] == ["auto_recharge.succeeded", "auto_recharge.limit_reached"]
    assert {k: got[0]["data"][k] for k in ("pack", "packs", "amount_cents", "currency")} == \
        {"pack": "500", "packs": 1, "amount_cents": 2500, "currency": "EUR"}
    assert got[1]["data"] == {"spent_cents": 2500, "spending_limit_cents": 2500, "currency": "EUR"}

    # A new card that declines, new settings (they lift the limit): three declines turn auto-recharge off.
    await kit.use_card(org, "declined")
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500", spending_limit_cents=10000)
    await _drain_to(kit, org, 10, "d3")
    await kit.advance(timedelta(hours=1))
    await kit.advance(timedelta(hours=1))
    types = [p["type"] for p in receiver.acked("recharge")][2:]
    assert types == ["payment.failed"] * 3 + ["auto_recharge.disabled"], types
    assert receiver.acked("recharge")[-1]["data"]["reason"] == "payment_failed"


async def test_renewals_dunning_and_the_revert_to_free_reach_the_endpoint(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    await kit.billing.open_wallet(org)
    await register("dunning", ["subscription.renewed", "subscription.reverted_to_free", "payment.failed"],
                   org_id=org)
    sub = await kit.billing.subscribe(org, plan="starter", seats=1, email="ops@acme.test")
    assert sub.period_end is not None
    await kit.advance(sub.period_end - kit.now() + timedelta(minutes=1))
    await kit.use_card(org, "declined")
    sub = await kit.billing.subscription(org)
    assert sub.period_end is not None
    await kit.advance(sub.period_end - kit.now() + timedelta(days=6))  # the renewal and 3 retries declined
    got = receiver.acked("dunning")
    assert [p["type"] for p in got] == ["subscription.renewed"] + ["payment.failed"] * 4 + [
        "subscription.reverted_to_free"], [p["type"] for p in got]
    assert got[0]["data"]["after_failed_payment"] is False and got[0]["data"]["plan"] == "starter"
    assert [p["data"]["purpose"] for p in got[1:5]] == ["renewal", "retry", "retry", "retry"]
    assert got[-1]["data"]["previous_plan"] == "starter" and got[-1]["data"]["plan"] == "free"


async def test_the_dispatcher_pokes_a_busy_endpoint_only_for_new_events(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    """A failing endpoint's workflow backs off for days: polls that find nothing new must not signal it each
    time (its history would grow with every poll)."""
    await kit.billing.open_wallet(org)
    endpoint = await register("busy", ["usage_guard.paused"], org_id=org)
    receiver.status["busy"] = 500
    await kit.billing.set_usage_guard(org, "ai_chat", max_uses=1, window=timedelta(hours=1))
    await kit.billing.debit(org, action="ai_chat", tier="fast", idempotency_key="1")
    with pytest.raises(UsageGuardPaused):
        await kit.billing.debit(org, action="ai_chat", tier="fast", idempotency_key="2")
    await kit.settle()  # its first attempt failed; the workflow waits on the retry
    assert kit.webhooks is not None
    dispatcher = WebhookDispatcher(kit.webhooks.pool, kit.env.client, TASK_QUEUE, recheck=timedelta(0))
    handle = kit.env.client.get_workflow_handle(delivery_workflow_id(endpoint["id"]))

    async def signals() -> int:
        history = await handle.fetch_history()
        return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in history.events)

    assert endpoint["id"] in await dispatcher.dispatch()      # a dispatcher new to it: one poke
    before = await signals()
    for _ in range(3):                                         # nothing new, its workflow running: no poke
        assert endpoint["id"] not in await dispatcher.dispatch()
    assert await signals() == before
    await kit.billing.resume_action(org, "ai_chat")
    with pytest.raises(UsageGuardPaused):  # still past its limit this hour: paused again, a new event
        await kit.billing.debit(org, action="ai_chat", tier="fast", idempotency_key="3")
    assert endpoint["id"] in await dispatcher.dispatch()      # a new event: poked once
    assert await signals() == before + 1
    receiver.status["busy"] = 200
    await kit.advance(timedelta(hours=1))
    assert [p["type"] for p in receiver.acked("busy")] == ["usage_guard.paused"] * 2
