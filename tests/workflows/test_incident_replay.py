"""Determinism across incidents (failure model rule 3): histories in which a step failed for good, was an
incident, was tried again and went through, replay without a non-determinism error, fresh and as recorded
(histories/incidents/ beside this file). The recorded set was made by the code before incidents became
webhook events (workflow.patched "incident-events"): running workflows replay as they ran.

Four incidents, one per place an incident opens: a renewal Stripe refuses (the subscription's main loop),
an upgrade whose answer was lost after Stripe charged (an update's unfinished change, completed by the
loop), an auto-recharge charge in doubt and a pack charge in doubt (workflows/common.py `_until_done`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from models.errors import ServiceUnavailable
from models.keys import pack_workflow_id, recharge_workflow_id
from temporal_client import DATA_CONVERTER
from testkit import TestKit
from tests.support.histories import run_histories
from tests.support.incidents import incident_of
from tests.support.keys import stamp
from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.pack_purchase import PackPurchaseWorkflow
from workflows.subscription import SubscriptionWorkflow

EMAIL = "billing@acme.test"
RECORDED = Path(__file__).with_name("histories") / "incidents"




def upserts_incident(history: WorkflowHistory, step: str) -> bool:
    """Whether the history set BillingIncident to `step` (it holds an incident)."""
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if "BillingIncident" in fields and json.loads(fields["BillingIncident"].data or b"null") == step:
                return True
    return False


async def renewal_refused(kit: TestKit, org: str) -> list[WorkflowHistory]:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    key = f"{org}:{stamp(sub.period_end)}:renewal"
    kit.payments.refuse_charges.add(key)
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
        await kit.advance(timedelta(minutes=1, seconds=30))  # the first retry: refused again
        assert "attempt 2" in ((await kit.billing.subscription(org)).incident or "")
    finally:
        kit.payments.refuse_charges.discard(key)
    done = await kit.billing.retry_now(org)
    assert (done.renewals, done.incident) == (1, None)
    runs = await run_histories(kit.env.client, org)
    assert len(runs) == 2 and upserts_incident(runs[0], "renewal")
    return runs


async def upgrade_lost(kit: TestKit, org: str) -> list[WorkflowHistory]:
    sub = await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    key = f"{org}:{stamp(sub.period_start)}:upgrade-1"
    kit.payments.lose_after_stripe.add(key)
    try:
        with pytest.raises(ServiceUnavailable, match="completes it on its own"):
            await kit.billing.upgrade(org, plan="pro")
    finally:
        kit.payments.lose_after_stripe.discard(key)
    done = await kit.billing.retry_now(org)
    assert (done.plan, done.incident) == ("pro", None)
    [run] = await run_histories(kit.env.client, org)
    assert upserts_incident(run, "upgrade")
    return [run]


async def recharge_in_doubt(kit: TestKit, org: str) -> list[WorkflowHistory]:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(100), pack="500")
    key = f"{org}:{stamp(sub.period_start)}:auto_recharge:1"
    kit.payments.lose_after_stripe.add(key)
    try:
        available = (await kit.billing.balance(org)).available
        debit = await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=available - 50,
                                        idempotency_key="drain")
        assert debit.recharge_triggered
        await incident_of(kit.env.client, recharge_workflow_id(org), "auto-recharge charge")
    finally:
        kit.payments.lose_after_stripe.discard(key)
    await kit.advance(timedelta(minutes=2))  # the backoff's retry finds the charge Stripe made
    assert [(c.purpose, c.status) for c in kit.charges(org)][-1] == ("auto_recharge", "succeeded")
    history = await kit.env.client.get_workflow_handle(recharge_workflow_id(org)).fetch_history()
    assert upserts_incident(history, "auto-recharge charge")
    return [history]


async def pack_in_doubt(kit: TestKit, org: str) -> list[WorkflowHistory]:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    key = f"{org}:pack:p1"
    kit.payments.lose_after_stripe.add(key)
    try:
        buying = asyncio.create_task(kit.billing.buy_credits(org, pack="500", idempotency_key="p1"))
        await incident_of(kit.env.client, pack_workflow_id(org, "p1"), "pack charge")
    finally:
        kit.payments.lose_after_stripe.discard(key)
    await kit.advance(timedelta(minutes=2))
    bought = await buying
    assert bought.credits == 500
    history = await kit.env.client.get_workflow_handle(pack_workflow_id(org, "p1")).fetch_history()
    assert upserts_incident(history, "pack charge")
    return [history]


async def test_histories_with_incidents_replay(kit: TestKit, org: str) -> None:
    fresh: list[tuple[str, WorkflowHistory]] = []
    for name, scenario in (("renewal", renewal_refused), ("upgrade", upgrade_lost),
                           ("auto-recharge", recharge_in_doubt), ("pack", pack_in_doubt)):
        fresh += [(name, h) for h in await scenario(kit, f"{org}-{name}")]
    if os.environ.get("RECORD_HISTORIES"):  # refresh the recorded set: RECORD_HISTORIES=1 pytest -k replay
        RECORDED.mkdir(parents=True, exist_ok=True)
        for n, (name, history) in enumerate(fresh):
            (RECORDED / f"{n:02d}-{name}.json").write_text(json.dumps(
                {"workflow_id": history.workflow_id, "history": history.to_json_dict()}, indent=1))
    recorded = [json.loads(p.read_text()) for p in sorted(RECORDED.glob("*.json"))]
    assert len(recorded) == 5, "recorded histories missing under tests/workflows/histories/incidents/"
    histories = [h for _, h in fresh] + [WorkflowHistory.from_json(r["workflow_id"], r["history"]) for r in recorded]
    replayer = Replayer(workflows=[SubscriptionWorkflow, AutoRechargeWorkflow, PackPurchaseWorkflow],
                        data_converter=DATA_CONVERTER)
    results = await replayer.replay_workflows(_each(histories), raise_on_replay_failure=False)
    assert results.replay_failures == {}


async def _each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history
