"""Incidents as webhook events (docs/webhooks.md): a step that failed for good (failure model rule 3) is
`incident.opened` once, however often its retries fail, and `incident.resolved` once when it goes through;
writing the event never holds up the step (failure model rule 2): refused, it is tried again at the next retry.

Incidents are provoked through the kit's payment seams (testkit/payments.py): `refuse_charges` (Stripe answers
a 400, for good) and `lose_after_stripe` (Stripe charged, the answer was lost: in doubt)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from models.errors import PaymentProviderRefused
from models.keys import pack_workflow_id
from models.webhook_types import (
    EVENT_TYPES,
    INCIDENT_OPENED,
    INCIDENT_RESOLVED,
    IncidentChange,
    incident_event,
    incident_key,
    redact_error,
)
from testkit import TestKit
from tests.support.histories import run_histories
from tests.support.incidents import incident_of
from tests.support.keys import stamp
from tests.webhooks.conftest import Register, db_events
from tests.webhooks.receiver import Receiver
from workflows.common import INCIDENT, INCIDENT_EVENTS_PATCH

EMAIL = "ops@acme.test"
INCIDENT_TYPES = [INCIDENT_OPENED, INCIDENT_RESOLVED]


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def incident_events(kit: TestKit, org: str) -> list[str]:
    return [t for _, _, t in db_events(kit, org) if t in INCIDENT_TYPES]


def delivered_once(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    """The payloads `path` acknowledged, each event id acknowledged exactly once."""
    got = receiver.acked(path)
    ids = [p["id"] for p in got]
    assert len(ids) == len(set(ids)), f"an event delivered twice: {ids}"
    return got


def history_has_patch(history: WorkflowHistory) -> bool:
    """Whether a run went through INCIDENT_EVENTS_PATCH (its marker is in the history)."""
    for e in history.events:
        marker = e.marker_recorded_event_attributes
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and marker.marker_name == "core_patch":
            if json.loads(marker.details["patch-data"].payloads[0].data)["id"] == INCIDENT_EVENTS_PATCH:
                return True
    return False




async def test_a_renewal_incident_is_opened_once_then_resolved_once(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    await register("inc", list(EVENT_TYPES), org_id=org)
    key = f"{org}:{stamp(sub.period_end)}:renewal"
    kit.payments.refuse_charges.add(key)  # Stripe answers the renewal's charge with a 400, for good
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
        assert "renewal failed (attempt 1" in ((await kit.billing.subscription(org)).incident or "")
        [opened] = [p for p in delivered_once(receiver, "inc") if p["type"] in INCIDENT_TYPES]
        assert opened["type"] == INCIDENT_OPENED and opened["org_id"] == org
        data = opened["data"]
        assert (data["workflow"], data["step"], data["error_type"]) == ("subscription", "renewal",
                                                                         "PaymentProviderRefused")
        assert "refused the charge" in data["error_message"] and EMAIL not in str(opened)
        assert sub.period_end - timedelta(seconds=1) <= at(data["since"]) <= sub.period_end + timedelta(seconds=30)
        assert opened["timestamp"].startswith(data["since"][:-1])  # the event's time is the incident's start

        await kit.advance(timedelta(minutes=1, seconds=30))  # the backoff's retry: refused again
        assert "attempt 2" in ((await kit.billing.subscription(org)).incident or "")
        assert incident_events(kit, org) == [INCIDENT_OPENED]  # the retry wrote no second opening
    finally:
        kit.payments.refuse_charges.discard(key)
    done = await kit.billing.retry_now(org)  # fixed: an operator asks, the renewal goes through
    assert (done.renewals, done.incident) == (1, None)
    await kit.settle()
    got = [p for p in delivered_once(receiver, "inc") if p["type"] in INCIDENT_TYPES]
    assert [p["type"] for p in got] == INCIDENT_TYPES
    resolved = got[1]["data"]
    assert {k: resolved[k] for k in ("workflow", "step", "since")} == {"workflow": "subscription", "step": "renewal",
                                                                       "since": data["since"]}
    assert at(resolved["resolved_at"]) >= at(data["since"]) + timedelta(minutes=1)
    assert "error_type" not in resolved
    # In cause order: the incident resolved before the renewal's own events, which come after.
    types = [p["type"] for p in delivered_once(receiver, "inc")]
    assert types.index(INCIDENT_RESOLVED) > types.index(INCIDENT_OPENED)
    assert "subscription.renewed" in types
    assert incident_events(kit, org) == INCIDENT_TYPES  # once each, also in the log
    runs = await run_histories(kit.env.client, org)
    assert history_has_patch(runs[0]) and not history_has_patch(runs[1])  # the renewal's run, the next one


async def test_a_pack_charge_in_doubt_is_an_incident_of_the_pack_workflow(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    await register("pack", INCIDENT_TYPES, org_id=org)
    key = f"{org}:pack:p1"
    kit.payments.lose_after_stripe.add(key)  # Stripe charged; the answer never comes back: in doubt
    try:
        buying = asyncio.create_task(kit.billing.buy_credits(org, pack="500", idempotency_key="p1"))
        await incident_of(kit.env.client, pack_workflow_id(org, "p1"), "pack charge")
        await kit.advance(timedelta(minutes=1, seconds=30))  # the retry: lost again
        assert incident_events(kit, org) == [INCIDENT_OPENED]
    finally:
        kit.payments.lose_after_stripe.discard(key)
    await kit.advance(timedelta(minutes=3))  # the next retry finds the PaymentIntent Stripe made
    bought = await buying
    assert bought.credits == 500
    await kit.settle()
    got = delivered_once(receiver, "pack")
    assert [p["type"] for p in got] == INCIDENT_TYPES
    opened, resolved = got[0]["data"], got[1]["data"]
    assert (opened["workflow"], opened["step"], opened["error_type"]) == ("pack", "pack charge", "SimulatedLoss")
    assert (resolved["workflow"], resolved["step"], resolved["since"]) == ("pack", "pack charge", opened["since"])
    assert [(c.purpose, c.status) for c in kit.charges(org)][-1] == ("pack", "succeeded")  # charged once
    assert len(await kit.payments.stripe_payment_intents(org)) == 2
    history = await kit.env.client.get_workflow_handle(pack_workflow_id(org, "p1")).fetch_history()
    assert history_has_patch(history)
    desc = await kit.env.client.get_workflow_handle(pack_workflow_id(org, "p1")).describe()
    assert desc.typed_search_attributes.get(INCIDENT) is None


async def test_a_charge_in_doubt_then_refused_for_good_resolves_its_incident(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    """The doubt ends with a certain answer (here Stripe refusing the retry): the purchase fails typed, and its
    incident is over: resolved, and no longer shown as BillingIncident. (The seams leave Stripe's first
    PaymentIntent unrecorded: a state no real Stripe makes, so this organization's books are not audited.)"""
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    await register("doubt", INCIDENT_TYPES, org_id=org)
    key = f"{org}:pack:p1"
    kit.payments.lose_after_stripe.add(key)
    try:
        buying = asyncio.create_task(kit.billing.buy_credits(org, pack="500", idempotency_key="p1"))
        await incident_of(kit.env.client, pack_workflow_id(org, "p1"), "pack charge")
        kit.payments.refuse_charges.add(key)
        await kit.advance(timedelta(minutes=1, seconds=30))
        with pytest.raises(PaymentProviderRefused):
            await buying
    finally:
        kit.payments.lose_after_stripe.discard(key)
        kit.payments.refuse_charges.discard(key)
    await kit.settle()
    assert [p["type"] for p in delivered_once(receiver, "doubt")] == INCIDENT_TYPES
    desc = await kit.env.client.get_workflow_handle(pack_workflow_id(org, "p1")).describe()
    assert desc.typed_search_attributes.get(INCIDENT) is None


@pytest.fixture
async def events_refused(kit: TestKit, org: str) -> AsyncIterator[str]:
    """A trigger that refuses every incident event of `org`, as a database that is away would (the rest of
    the database answers: the step's own retry runs); dropped when the test ends, or by the test."""
    name = f"refuse_incidents_{abs(hash(org)) % 10**9}"
    async with await psycopg.AsyncConnection.connect(kit.database_url, autocommit=True) as conn:
        await conn.execute(f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.org_id = TG_ARGV[0] AND NEW.type LIKE 'incident.%' THEN
                    RAISE EXCEPTION 'incident events refused (injected)';
                END IF;
                RETURN NEW;
            END $$""")
        await conn.execute(sql.SQL(
            "CREATE TRIGGER {} BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION {}({})").format(
            sql.Identifier(name), sql.Identifier(name), sql.Literal(org)))
    try:
        yield name
    finally:
        await drop_trigger(kit, name)


async def drop_trigger(kit: TestKit, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(kit.database_url, autocommit=True) as conn:
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON events")
        await conn.execute(f"DROP FUNCTION IF EXISTS {name}()")


async def test_an_incident_event_the_database_refuses_never_holds_up_the_step(
    kit: TestKit, org: str, receiver: Receiver, register: Register, events_refused: str
) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    await register("refused", INCIDENT_TYPES, org_id=org)
    key = f"{org}:{stamp(sub.period_end)}:renewal"
    kit.payments.refuse_charges.add(key)
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
        # The event could not be written (within its deadline): the incident is recorded and its retry
        # scheduled all the same, nothing else waits on it.
        held = await kit.billing.subscription(org)
        assert held.incident is not None and "renewal failed (attempt 1" in held.incident
        assert incident_events(kit, org) == []
        await drop_trigger(kit, events_refused)  # the database takes them again
        await kit.advance(timedelta(minutes=1, seconds=30))  # the retry fails again: now the opening is written
        assert "attempt 2" in ((await kit.billing.subscription(org)).incident or "")
        assert incident_events(kit, org) == [INCIDENT_OPENED]
    finally:
        kit.payments.refuse_charges.discard(key)
    done = await kit.billing.retry_now(org)
    assert (done.renewals, done.incident) == (1, None)
    await kit.settle()
    got = delivered_once(receiver, "refused")
    assert [p["type"] for p in got] == INCIDENT_TYPES
    # The opening carries the incident's first failure, not the retry that wrote it.
    assert at(got[0]["data"]["since"]) <= sub.period_end + timedelta(seconds=30)
    assert got[1]["data"]["since"] == got[0]["data"]["since"]


# -- the pure parts and the activity's declaration ------------------------------------------------------------


def test_the_event_is_keyed_by_org_step_start_and_subject_and_carries_no_address() -> None:
    since, later = datetime(2026, 3, 1, 12, 0, 5, 250000, tzinfo=UTC), datetime(2026, 3, 1, 14, tzinfo=UTC)
    opened = IncidentChange("acme:eu", "pack", "pack charge", since, "acme%3Aeu:pack:p1", "PaymentProviderRefused",
                            "Key (email)=(ada.lovelace@analytical.test) refused <bob@x.test>")
    kind, key, data, when = incident_event(opened)
    assert (kind, when) == (INCIDENT_OPENED, since)
    assert key == "acme%3Aeu:2026-03-01T12:00:05Z:incident:pack charge:acme%3Aeu:pack:p1"
    assert data == {"workflow": "pack", "step": "pack charge", "since": "2026-03-01T12:00:05Z",
                    "error_type": "PaymentProviderRefused",
                    "error_message": "Key (email)=([redacted]) refused <[redacted]>"}
    kind, key2, data, when = incident_event(IncidentChange("acme:eu", "pack", "pack charge", since,
                                                           "acme%3Aeu:pack:p1", resolved_at=later))
    assert (kind, key2, when) == (INCIDENT_RESOLVED, key, later)
    assert data == {"workflow": "pack", "step": "pack charge", "since": "2026-03-01T12:00:05Z",
                    "resolved_at": "2026-03-01T14:00:00Z"}
    # Another pack's incident of the same step at the same second is another incident.
    assert incident_key("acme:eu", "pack charge", since, "acme%3Aeu:pack:p2") != key
    assert incident_key("acme", "renewal", since) == "acme:2026-03-01T12:00:05Z:incident:renewal"
    assert len(redact_error("x" * 2000)) == 500
