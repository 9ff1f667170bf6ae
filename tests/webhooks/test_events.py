"""The event log: each event is written in the transaction of its cause (a cause rolled back leaves none), once
per cause, and numbered in commit order, so a consumer paging `GET /v1/events?after=` while causes commit
concurrently sees every event exactly once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import AsyncConnection

from mail.mailer import Mailer
from models.billing_types import SendEmail
from stack.mail import SmtpSink
from testkit import TestKit
from tests.conftest import T0, OrgFactory


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(database_url, autocommit=True) as c:
        yield c


async def _events(conn: AsyncConnection[Any], org_id: str) -> list[tuple[str, dict[str, Any]]]:
    cur = await conn.execute("SELECT type, data FROM events WHERE org_id = %s ORDER BY seq", (org_id,))
    return [(t, d) for t, d in await cur.fetchall()]


class _Rollback(Exception):
    pass


async def _in_rolled_back_transaction(conn: AsyncConnection[Any], org_id: str, cause: str,
                                      params: tuple[Any, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Run `cause` in a transaction, read the organization's events inside it, then roll it back."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(_Rollback):
        async with conn.transaction():
            await conn.execute(cause, params)
            seen = await _events(conn, org_id)
            raise _Rollback
    return seen


async def test_a_trigger_writes_the_event_in_the_transaction_of_its_cause(
    conn: AsyncConnection[Any], new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    causes: list[tuple[str, str, tuple[Any, ...], str]] = [
        ("an 80% alert", "INSERT INTO alerts (org_id, kind, period_key, created_at) VALUES (%s, 'plan_80', %s, %s)",
         (org, str(int(T0.timestamp())), T0), "credits.usage_80"),
        ("a low balance", "INSERT INTO alerts (org_id, kind, period_key, detail, created_at) "
         "VALUES (%s, 'low_balance', 'k1', '95500', %s)", (org, T0), "credits.low_balance"),
        ("a paused guard", "INSERT INTO alerts (org_id, kind, period_key, detail, created_at) "
         "VALUES (%s, 'usage_guard_paused', 'ai_chat:k2', 'ai_chat', %s)", (org, T0), "usage_guard.paused"),
        ("a declined payment", "INSERT INTO payments (key, org_id, purpose, amount_cents, currency, description, "
         "request, status, decline_code, created_at, updated_at) VALUES (%s || ':p1', %s, 'pack', 2500, 'EUR', "
         "'pack 500', '{}', 'declined', 'card_declined', %s, %s)", (org, org, T0, T0), "payment.failed"),
    ]
    for what, sql, params, event_type in causes:
        seen = await _in_rolled_back_transaction(conn, org, sql, params)
        assert [t for t, _ in seen] == [event_type], what
        assert await _events(conn, org) == [], f"{what}: rolled back, and its event with it"

    # A payment's success and its invoice, written as payments/charges.py writes them: one transaction.
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO payments (key, org_id, purpose, amount_cents, currency, description, request, status, "
            "created_at, updated_at) VALUES (%s, %s, 'pack', 2500, 'EUR', 'pack 500', '{}', 'pending', %s, %s)",
            (f"{org}:p2", org, T0, T0))
    assert await _events(conn, org) == []  # pending: no event yet
    with pytest.raises(_Rollback):
        async with conn.transaction():
            await conn.execute("UPDATE payments SET status = 'succeeded', stripe_payment_intent = %s, updated_at = %s "
                               "WHERE key = %s", (f"pi_{org}", T0 + timedelta(seconds=1), f"{org}:p2"))
            await conn.execute(
                "INSERT INTO invoices (number, year, seq, org_id, payment_key, purpose, issued_at, currency, lines, "
                "subtotal_cents, tax_rate, tax_cents, total_cents, stripe_payment_id, html) VALUES (%s, 1999, "
                "(SELECT coalesce(max(seq), 0) + 1 FROM invoices WHERE year = 1999), %s, %s, 'pack', %s, 'EUR', "
                "'[]', 2500, 0, 0, 2500, 'pi', '<html>ops@acme.test</html>')",
                (f"INV-TEST-{org}", org, f"{org}:p2", T0))
            assert [t for t, _ in await _events(conn, org)] == ["payment.succeeded", "invoice.issued"]
            raise _Rollback
    assert await _events(conn, org) == []
    await conn.execute("UPDATE payments SET status = 'declined', decline_code = 'test', updated_at = %s "
                       "WHERE key = %s", (T0, f"{org}:p2"))  # no payment is left pending (the audit's bound)
    await conn.execute("DELETE FROM events WHERE org_id = %s", (org,))

    # Committed causes keep their events; auto-recharge turned off by its owner is no event, by the engine one;
    # a repeat of a cause (the same key) writes no second one.
    await conn.execute("INSERT INTO alerts (org_id, kind, period_key, detail, created_at) "
                       "VALUES (%s, 'low_balance', 'k9', '-1500', %s)", (org, T0))
    await conn.execute("INSERT INTO auto_recharge (org_id, enabled, threshold, pack, spending_limit_cents, "
                       "updated_at) VALUES (%s, true, 100000, '500', 5000, %s)", (org, T0))
    await conn.execute("UPDATE auto_recharge SET enabled = false, updated_at = %s WHERE org_id = %s", (T0, org))
    assert [t for t, _ in await _events(conn, org)] == ["credits.low_balance"]
    await conn.execute("UPDATE auto_recharge SET enabled = true, version = version + 1 WHERE org_id = %s", (org,))
    with pytest.raises(_Rollback):
        async with conn.transaction():
            await conn.execute("UPDATE auto_recharge SET enabled = false, disabled_reason = 'payment_failed', "
                               "version = version + 1, updated_at = %s WHERE org_id = %s", (T0, org))
            assert [t for t, _ in await _events(conn, org)][-1] == "auto_recharge.disabled"
            raise _Rollback
    assert [t for t, _ in await _events(conn, org)] == ["credits.low_balance"]
    await conn.execute("UPDATE auto_recharge SET enabled = false, disabled_reason = 'payment_failed', "
                       "version = version + 1, updated_at = %s WHERE org_id = %s", (T0, org))
    await conn.execute("SELECT webhook_event(%s, 'credits.low_balance', 'alert:again', '{}', %s)", (org, T0))
    await conn.execute("SELECT webhook_event(%s, 'credits.low_balance', 'alert:again', '{}', %s)", (org, T0))
    events = await _events(conn, org)
    assert [t for t, _ in events] == ["credits.low_balance", "auto_recharge.disabled", "credits.low_balance"]
    assert events[0][1]["available"] == "-1.5"
    assert events[1][1] == {"reason": "payment_failed", "pack": "500", "credits": None, "threshold": "100",
                            "spending_limit_cents": 5000}


async def test_an_emailed_step_writes_its_event_with_its_outbox_row_once_and_without_personal_data(
    database_url: str, conn: AsyncConnection[Any], tmp_path: Any, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    with SmtpSink(tmp_path / "mail") as sink:
        mailer = await Mailer.open(database_url, sink.url, pool_size=2)
        try:
            req = SendEmail(org, f"{org}:2026-01-15T12:00:00Z:cancel-1", "cancellation_scheduled",
                            "ada.lovelace@analytical.test", T0,
                            {"org_id": org, "plan": "pro", "effective": "2026-02-15"})
            await mailer.send(req)
            await mailer.send(req)  # a retried step: the same email, the same event
            await mailer.send(SendEmail(org, f"{org}:x:trial-ending", "trial_ending", "ada.lovelace@analytical.test",
                                        T0, {"org_id": org, "plan": "pro", "trial_end": "2026-01-29",
                                             "amount": "EUR 90.00"}))  # a notice, no event
        finally:
            await mailer.close()
    cur = await conn.execute("SELECT id, type, data, created_at FROM events WHERE org_id = %s", (org,))
    rows = await cur.fetchall()
    assert [(t, d, at) for _, t, d, at in rows] == [
        ("subscription.cancelled", {"plan": "pro", "effective": "2026-02-15"}, T0)]
    cur = await conn.execute("SELECT webhook_event_id('subscription.cancelled', %s)", (req.key,))
    assert (await cur.fetchone()) == (rows[0][0],)  # keyed by the outbox key
    cur = await conn.execute("SELECT count(*) FROM events WHERE data::text LIKE %s", ("%analytical.test%",))
    assert (await cur.fetchone()) == (0,)


async def test_paging_by_cursor_while_causes_commit_concurrently_skips_and_repeats_nothing(
    kit: TestKit, org: str
) -> None:
    orgs = [f"{org}-{i}" for i in range(6)]
    written: list[str] = []

    async def writer(org_id: str) -> None:
        rnd = random.Random(org_id)
        async with await AsyncConnection.connect(kit.database_url, autocommit=True) as c:
            for n in range(15):
                async with c.transaction():
                    # The seq is taken here; the commit comes after a pause, while other writers commit.
                    await c.execute("SELECT webhook_event(%s, 'credits.low_balance', %s, '{}', %s)",
                                    (org_id, f"alert:{org_id}:{n}", datetime.now(UTC)))
                    await asyncio.sleep(rnd.random() * 0.01)
                written.append(f"{org_id}:{n}")
                await asyncio.sleep(rnd.random() * 0.005)

    seen: list[dict[str, Any]] = []
    secret = await kit.api_key("platform")
    with psycopg.connect(kit.database_url) as c:
        start = c.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    assert start is not None
    cursor = int(start[0])
    writers = asyncio.gather(*(writer(o) for o in orgs))
    async with httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {secret}"}) as http:
        while True:
            done = writers.done()
            page = (await http.get("/v1/events", params={"after": cursor, "limit": 7})).raise_for_status().json()
            seen.extend(page["data"])
            assert page["next_after"] >= cursor
            cursor = page["next_after"]
            if done and not page["data"]:
                break
    await writers
    mine = [e for e in seen if e["org_id"] in orgs]
    assert len(mine) == len(written) == 90
    assert len({e["id"] for e in mine}) == 90                      # no repeats
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    with psycopg.connect(kit.database_url) as c:
        ids = [r[0] for r in c.execute("SELECT id FROM events WHERE org_id = ANY(%s) ORDER BY seq", (orgs,))]
    assert [e["id"] for e in mine] == ids                          # nothing skipped, in seq order
