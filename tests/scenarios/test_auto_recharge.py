"""Auto-recharge through the test kit (time-skipping Temporal, PostgreSQL, localstripe, SMTP): the debit
path starts it, concurrent triggers collapse into one charge, the period's spending limit holds, a
declined card is retried then auto-recharge turns off (issue 4's scenarios, with exact amounts)."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHistory
from temporalio.worker import Replayer

from models.errors import InvalidRequest
from models.keys import pack_workflow_id
from models.keys import recharge_workflow_id as workflow_id
from temporal_client import DATA_CONVERTER
from testkit import TestKit
from tests.support.keys import stamp
from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.common import ORG_ID, PERIOD_END, STATUS
from workflows.pack_purchase import PackPurchaseWorkflow

EMAIL = "billing@acme.test"


def recharges(kit: TestKit, org: str) -> list[tuple[int, str]]:
    return [(c.amount_cents, c.status) for c in kit.charges(org) if c.purpose == "auto_recharge"]


def templates(kit: TestKit, org: str, prefix: str = "auto_recharge") -> list[str]:
    return [m.template for m in kit.emails(org) if m.template.startswith(prefix)]




async def drain_to(kit: TestKit, org: str, left: int, key: str) -> bool:
    """Debit (ai_chat on the fast tier, 1 credit each) down to `left` credits; returns whether the debit
    triggered an auto-recharge."""
    available = (await kit.billing.balance(org)).available
    result = await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=available - left,
                                     idempotency_key=key)
    assert result.available == Decimal(left)
    await kit.settle()
    return result.recharge_triggered


async def test_two_drains_buy_two_packs_then_the_limit_stops_it_until_the_next_period(
    kit: TestKit, org: str
) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    settings = await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500")
    assert (settings.enabled, settings.spending_limit_cents) == (True, 5000)  # the default limit: 50.00

    assert await drain_to(kit, org, 50, "d1")
    assert recharges(kit, org) == [(2500, "succeeded")]
    assert (await kit.billing.balance(org)).available == Decimal(550)
    assert await drain_to(kit, org, 50, "d2")
    assert recharges(kit, org) == [(2500, "succeeded")] * 2
    assert templates(kit, org) == ["auto_recharge_receipt"] * 2
    invoices = [i for i in await kit.billing.invoices(org) if i.purpose == "auto_recharge"]
    assert [i.total_cents for i in invoices] == [2500, 2500]

    # The third drain: one more pack would spend 75.00 of a 50.00 limit. Nothing is charged, one email.
    assert await drain_to(kit, org, 50, "d3")
    assert not await drain_to(kit, org, 40, "d4")  # blocked until the period ends: no trigger at all
    assert recharges(kit, org) == [(2500, "succeeded")] * 2
    assert templates(kit, org) == ["auto_recharge_receipt"] * 2 + ["auto_recharge_limit"]
    limit_mail = next(m for m in kit.emails(org) if m.template == "auto_recharge_limit")
    assert limit_mail.subject == "Auto-recharge paused: spending limit reached"
    assert "EUR 50.00" in limit_mail.text

    handle = kit.env.client.get_workflow_handle(workflow_id(org))
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert desc.typed_search_attributes.get(ORG_ID) == org
    assert desc.typed_search_attributes.get(STATUS) == "limit_reached"
    assert desc.typed_search_attributes.get(PERIOD_END) == sub.period_end

    # The next billing period: the renewal grants 10,000 plan credits; draining again recharges again.
    assert sub.period_end is not None
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    assert (await kit.billing.subscription(org)).renewals == 1
    assert await drain_to(kit, org, 50, "d5")
    assert recharges(kit, org) == [(2500, "succeeded")] * 3
    assert (await kit.billing.balance(org)).available == Decimal(550)
    assert templates(kit, org).count("auto_recharge_limit") == 1
    assert (await handle.describe()).typed_search_attributes.get(STATUS) == "recharged"


async def test_one_charge_buys_as_many_packs_as_bring_the_balance_back_above(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(1200), pack="500", spending_limit_cents=10000)
    assert await drain_to(kit, org, 100, "d1")  # 1,100 short: 3 packs make 1,600 (2 would make 1,100)
    assert recharges(kit, org) == [(7500, "succeeded")]
    assert (await kit.billing.balance(org)).available == Decimal(1600)
    [receipt] = [m for m in kit.emails(org) if m.template == "auto_recharge_receipt"]
    assert "3 pack(s)" in receipt.text and "EUR 75.00" in receipt.subject


async def test_twenty_concurrent_crossing_debits_give_exactly_one_charge(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(9990), pack="500")
    results = await asyncio.gather(*(
        kit.billing.debit(org, action="ai_chat", tier="fast", quantity=11, idempotency_key=f"c{i}")
        for i in range(20)))
    assert all(r.available is not None and r.available < 9990 for r in results)  # every one left it under
    assert sum(r.recharge_triggered for r in results) == 1
    await kit.settle()
    assert recharges(kit, org) == [(2500, "succeeded")]
    assert (await kit.billing.balance(org)).available == Decimal(10000 - 220 + 500)


async def test_a_declined_card_is_tried_three_times_then_auto_recharge_turns_off(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.use_card(org, "declined")
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500")
    assert await drain_to(kit, org, 50, "d1")
    assert recharges(kit, org) == [(2500, "declined")]
    assert templates(kit, org) == ["auto_recharge_failed"]
    assert not await drain_to(kit, org, 45, "d2")  # the retry is coming: no second trigger
    await kit.advance(timedelta(hours=1))
    assert recharges(kit, org) == [(2500, "declined")] * 2
    await kit.advance(timedelta(hours=1))
    assert recharges(kit, org) == [(2500, "declined")] * 3
    mails = [m for m in kit.emails(org) if m.template == "auto_recharge_failed"]
    assert [m.subject for m in mails] == (["Auto-recharge payment failed"] * 2
                                          + ["Auto-recharge disabled: payment failed"])
    assert "attempt 3" in mails[2].text and "now disabled" in mails[2].text
    settings = await kit.billing.auto_recharge(org)
    assert settings is not None and (settings.enabled, settings.disabled_reason) == (False, "payment_failed")
    assert (await kit.billing.balance(org)).topup == Decimal(0)
    assert not await drain_to(kit, org, 10, "d3")  # off: debits no longer trigger
    await kit.advance(timedelta(hours=2))
    assert len(recharges(kit, org)) == 3
    desc = await kit.env.client.get_workflow_handle(workflow_id(org)).describe()
    assert desc.typed_search_attributes.get(STATUS) == "disabled"


async def test_a_crash_after_stripe_charged_the_recharge_charges_and_grants_once(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="1000")
    key = f"{org}:{stamp(sub.period_start)}:auto_recharge:1"
    kit.payments.crash_after_stripe.add(key)  # the charge activity dies after Stripe confirmed
    assert await drain_to(kit, org, 50, "d1")
    assert key not in kit.payments.crash_after_stripe, "the crash did not fire"
    assert [(c.key, c.status) for c in kit.charges(org) if c.purpose == "auto_recharge"] == [(key, "succeeded")]
    assert len(await kit.payments.stripe_payment_intents(org)) == 2  # the subscription's and the recharge's
    assert (await kit.billing.balance(org)).available == Decimal(1050)
    assert templates(kit, org) == ["auto_recharge_receipt"]


async def test_a_free_organization_recharges_within_a_calendar_month_limit(kit: TestKit, org: str) -> None:
    await kit.billing.open_wallet(org)
    card = await kit.payments.create_card("4242424242424242")
    await kit.billing.buy_credits(org, pack="500", idempotency_key="first", email=EMAIL, payment_method=card)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500", spending_limit_cents=2500)
    assert await drain_to(kit, org, 20, "d1")
    assert recharges(kit, org) == [(2500, "succeeded")]
    assert await drain_to(kit, org, 20, "d2")  # this month's 25.00 is spent
    assert recharges(kit, org) == [(2500, "succeeded")]
    assert templates(kit, org) == ["auto_recharge_receipt", "auto_recharge_limit"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"threshold": Decimal(100), "pack": "750"}, "unknown pack"),
    ({"threshold": Decimal(-1), "pack": "500"}, "cannot be negative"),
    ({"threshold": Decimal(100), "pack": "2500", "spending_limit_cents": 9999}, "cannot buy even one"),
    ({"threshold": 100.0, "pack": "500"}, "Decimal"),
])
async def test_bad_settings_are_refused_and_change_nothing(
    kit: TestKit, org: str, kwargs: dict[str, object], message: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    before = await kit.billing.set_auto_recharge(org, threshold=Decimal(10), pack="1000", spending_limit_cents=9000)
    with pytest.raises(InvalidRequest, match=message):
        await kit.billing.set_auto_recharge(org, **kwargs)  # type: ignore[arg-type]
    assert await kit.billing.auto_recharge(org) == before


RECORDED = Path(__file__).with_name("histories") / "auto_recharge"


async def test_recharge_and_pack_histories_replay(kit: TestKit, org: str) -> None:
    """Determinism: auto-recharge runs (a decline, its retry an hour later, a recharge, the limit) and a pack
    purchase replay without a non-determinism error, fresh and as recorded (histories/auto_recharge/ beside
    this file)."""
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500")
    handle = kit.env.client.get_workflow_handle(workflow_id(org))
    await kit.use_card(org, "declined")
    assert await drain_to(kit, org, 50, "d1")
    await kit.use_card(org, "ok")
    await kit.advance(timedelta(hours=1))
    assert recharges(kit, org) == [(2500, "declined"), (2500, "succeeded")]
    fresh = [("auto-recharge", await handle.fetch_history())]
    assert await drain_to(kit, org, 50, "d2")
    assert await drain_to(kit, org, 50, "d3")
    assert templates(kit, org)[-1] == "auto_recharge_limit"
    fresh.append(("auto-recharge", await handle.fetch_history()))
    await kit.billing.buy_credits(org, pack="1000", idempotency_key="p1")
    fresh.append(("pack", await kit.env.client.get_workflow_handle(pack_workflow_id(org, "p1")).fetch_history()))
    if os.environ.get("RECORD_HISTORIES"):  # refresh the recorded set: RECORD_HISTORIES=1 pytest -k replay
        RECORDED.mkdir(parents=True, exist_ok=True)
        for n, (name, history) in enumerate(fresh):
            (RECORDED / f"{name}-{n:02d}.json").write_text(json.dumps(
                {"workflow_id": history.workflow_id, "history": history.to_json_dict()}, indent=1))
    recorded = [json.loads(p.read_text()) for p in sorted(RECORDED.glob("*.json"))]
    assert len(recorded) == 3, "recorded histories missing under tests/scenarios/histories/auto_recharge/"
    histories = [h for _, h in fresh] + [WorkflowHistory.from_json(r["workflow_id"], r["history"]) for r in recorded]
    replayer = Replayer(workflows=[AutoRechargeWorkflow, PackPurchaseWorkflow], data_converter=DATA_CONVERTER)
    for history in histories:
        await replayer.replay_workflow(history)


async def test_a_hold_that_reserves_under_the_threshold_recharges_too(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(9990), pack="500")
    async with kit.billing.hold(org, action="credit_score", idempotency_key="lead-1") as held:  # 17 credits
        assert (held.available, held.recharge_triggered) == (Decimal(9983), True)
    await kit.settle()
    assert recharges(kit, org) == [(2500, "succeeded")]
    assert (await kit.billing.balance(org)).available == Decimal(10000 - 17 + 500)
