"""Failure model rule 10: the fleet-wide ceiling on Stripe requests per second (payments/ceiling.py), with
the session's PostgreSQL and a real localstripe, counted at Stripe's side by a recording proxy in a
process of its own (tests/support/stripe_recorder.py). No mocks: the failures are real (a database nobody
listens on, a ceiling row held by a stuck transaction, seconds that are full)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import stripe

from models.billing_types import ChargeRequest, EnsureCustomer, InvoiceLine
from models.errors import ServiceUnavailable
from payments import Payments, close_stripe_client, stripe_client, stripe_client_from_settings
from payments.ceiling import CeilingHTTPClient, StripeCeiling
from settings import InvalidSetting, Settings, check_stripe_max_rps
from stack.stripe_server import CARD_OK
from testkit import start_testkit
from testkit.payments import KitPayments
from tests.support.stripe_fixtures import localstripe_url, payments
from tests.support.stripe_recorder import Recorder, peak_per_second, stripe_recorder

__all__ = ["localstripe_url", "payments"]  # the session fixtures, used by name below


@pytest.fixture(scope="module")
async def recorder(localstripe_url: str) -> AsyncIterator[Recorder]:
    async with stripe_recorder(localstripe_url) as rec:
        yield rec


def dead_database_url() -> str:
    with socket.socket() as s:  # a port nobody listens on: the database is away
        s.bind(("127.0.0.1", 0))
        return f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/postgres?connect_timeout=2"


def new_key() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def since(rec: Recorder, start: float) -> list[float]:
    return [t for t, _, _ in await rec.arrivals() if t >= start]


async def list_customers(client: stripe.StripeClient) -> None:
    await client.v1.customers.list_async(params={"limit": 1})


async def test_two_workers_never_send_more_than_the_ceiling_in_any_second(
    database_url: str, recorder: Recorder,
) -> None:
    """Two clients with pools of their own (two workers) share one ceiling through the database only."""
    ceiling, per_worker = 4, 12
    key = new_key()
    workers = [StripeCeiling(database_url, ceiling, key=key) for _ in range(2)]
    clients = [stripe_client(base_url=recorder.url, ceiling=c) for c in workers]
    start = time.time()
    try:
        await asyncio.gather(*(list_customers(client) for client in clients for _ in range(per_worker)))
    finally:
        for client in clients:
            await close_stripe_client(client)
    arrivals = await since(recorder, start)
    assert len(arrivals) == 2 * per_worker  # every request reached Stripe, once
    assert peak_per_second(arrivals) <= ceiling, sorted(arrivals)
    # Not vacuous: 24 requests at once met full seconds and waited, in both workers.
    assert all(c.waits > 0 for c in workers)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM stripe_ceiling WHERE key = %s", (key,))
        assert await cur.fetchone() == (1,)  # the table does not grow with the seconds that passed


async def test_without_a_ceiling_no_database_is_called(localstripe_url: str, recorder: Recorder) -> None:
    settings = Settings(database_url=dead_database_url(), stripe_max_rps=None)
    client = stripe_client_from_settings(settings, recorder.url)
    try:
        assert not isinstance(client._requestor._client, CeilingHTTPClient)
        await list_customers(client)  # the database is away: a call to it would have failed
    finally:
        await close_stripe_client(client)


async def test_with_a_ceiling_and_no_database_nothing_is_sent(recorder: Recorder) -> None:
    """Fail closed: a ceiling that cannot be counted sends nothing and answers ServiceUnavailable."""
    settings = Settings(database_url=dead_database_url(), stripe_max_rps=5)
    client = stripe_client_from_settings(settings, recorder.url)
    start = time.time()
    try:
        with pytest.raises(ServiceUnavailable) as err:
            await list_customers(client)
        assert err.value.retryable
    finally:
        await close_stripe_client(client)
    assert await since(recorder, start) == []


async def test_the_settings_ceiling_counts_in_the_database_the_worker_passes(
    database_url: str, recorder: Recorder,
) -> None:
    """worker.py passes the database it runs on (DATABASE_URL may be unset: the embedded one)."""
    client = stripe_client_from_settings(Settings(stripe_max_rps=1000), recorder.url, database_url)
    try:
        http = client._requestor._client
        assert isinstance(http, CeilingHTTPClient) and http.ceiling.max_rps == 1000
        await list_customers(client)
    finally:
        await close_stripe_client(client)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT used FROM stripe_ceiling WHERE key = 'stripe'")
        assert (await cur.fetchone() or (0,))[0] >= 1


async def test_the_test_kit_passes_the_ceiling_to_its_worker(database_url: str) -> None:
    async with start_testkit(database_url=database_url, stripe_max_rps=50) as kit:
        http = kit.payments.stripe._requestor._client
        assert isinstance(http, CeilingHTTPClient) and http.ceiling.max_rps == 50
        before = int(time.time())
        await kit.payments.create_card(CARD_OK)  # a Stripe request of the kit's client
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT window_start FROM stripe_ceiling WHERE key = 'stripe'")
        assert (await cur.fetchone() or (0,))[0] >= before


async def test_no_slot_within_the_deadline_is_service_unavailable(database_url: str, recorder: Recorder) -> None:
    """One request per second, five at once, a one-second deadline: at most two seconds open before it,
    so some are refused; those reach Stripe never, the others once."""
    ceiling = StripeCeiling(database_url, 1, key=new_key(), wait_seconds=1.0)
    client = stripe_client(base_url=recorder.url, ceiling=ceiling)
    start = time.time()
    try:
        results = await asyncio.gather(*(list_customers(client) for _ in range(5)), return_exceptions=True)
    finally:
        await close_stripe_client(client)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert refused and all(isinstance(r, ServiceUnavailable) and r.retryable for r in refused), results
    assert len(await since(recorder, start)) == len(results) - len(refused) >= 1


async def test_a_stuck_ceiling_row_is_a_deadline_not_a_hang(database_url: str, recorder: Recorder) -> None:
    key = new_key()
    ceiling = StripeCeiling(database_url, 100, key=key, wait_seconds=1.0)
    client = stripe_client(base_url=recorder.url, ceiling=ceiling)
    try:
        await list_customers(client)  # the row exists
        async with await psycopg.AsyncConnection.connect(database_url) as holder, holder.transaction():
            await holder.execute("SELECT * FROM stripe_ceiling WHERE key = %s FOR UPDATE", (key,))
            start = time.time()
            with pytest.raises(ServiceUnavailable):
                await list_customers(client)
            assert await since(recorder, start) == []
        await list_customers(client)  # the holder is gone: slots again (the pool replaced its connection)
    finally:
        await close_stripe_client(client)


class StallsOnce(StripeCeiling):
    """The process stalls for `stall` seconds (the whole event loop blocked, as on a loaded machine) right
    after its first slot is granted, before it could send."""

    def __init__(self, *args: Any, stall: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stall: float | None = stall

    async def _take(self) -> tuple[bool, float, float]:
        granted, wait, valid = await super()._take()
        if granted and self.stall is not None:
            time.sleep(self.stall)  # noqa: ASYNC251 (the point: nothing else runs meanwhile)
            self.stall = None
        return granted, wait, valid


async def test_a_slot_its_process_could_not_use_in_its_second_is_given_up(
    database_url: str, recorder: Recorder,
) -> None:
    """Sent after a stall, a request would land in a later second on top of that second's own slots."""
    ceiling = StallsOnce(database_url, 5, key=new_key(), stall=1.1)
    client = stripe_client(base_url=recorder.url, ceiling=ceiling)
    start = time.time()
    try:
        await list_customers(client)
    finally:
        await close_stripe_client(client)
    assert ceiling.stale == 1  # the stalled slot was given up, and another taken
    assert len(await since(recorder, start)) == 1


async def test_a_charge_refused_a_slot_is_charged_once_when_retried(
    database_url: str, payments: KitPayments, recorder: Recorder,
) -> None:
    """The charge's row is written before Stripe is called; a slot refused leaves it pending, and the
    retry (Temporal's) finds no PaymentIntent for the key and creates exactly one."""
    now = datetime(2032, 3, 10, 12, 0, tzinfo=UTC)
    org = f"ceil-{uuid.uuid4().hex[:10]}"
    await payments.ensure_customer(EnsureCustomer(org, f"{org}@example.com", now))
    req = ChargeRequest(org, f"{org}:{now.isoformat()}:renewal", "renewal",
                        [InvoiceLine("pro x 1 seat", 1, 9000, 9000)], now, Decimal("0.20"))
    key = new_key()
    ceiling = StripeCeiling(database_url, 100, key=key, wait_seconds=1.0)
    client = stripe_client(base_url=recorder.url, ceiling=ceiling)
    capped = Payments(database_url, client, pool_size=2)
    try:
        await list_customers(client)  # the row exists
        async with await psycopg.AsyncConnection.connect(database_url) as holder, holder.transaction():
            await holder.execute("SELECT * FROM stripe_ceiling WHERE key = %s FOR UPDATE", (key,))
            with pytest.raises(ServiceUnavailable):
                await capped.charge(req)
        assert [c.status for c in await payments.charges(org)] == ["pending"]
        result = await capped.charge(req)
    finally:
        await capped.close()
        await close_stripe_client(client)
    assert not result.replayed
    assert [c.status for c in await payments.charges(org)] == ["succeeded"]
    assert await payments.stripe_payment_intents(org) == [result.payment_intent]


@pytest.mark.parametrize("raw, expected", [(None, None), ("25", 25), (" 3 ", 3), (7, 7)])
def test_the_setting_accepts_a_positive_whole_number(raw: Any, expected: int | None) -> None:
    assert check_stripe_max_rps(raw) == expected


@pytest.mark.parametrize("raw", ["0", "-5", "1.5", "ten", "1e3", 0, -1, 2.0, True])
def test_the_setting_refuses_anything_else(raw: Any) -> None:
    with pytest.raises(InvalidSetting, match="BILLING_STRIPE_MAX_RPS must be a"):
        check_stripe_max_rps(raw)


def test_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BILLING_STRIPE_MAX_RPS", raising=False)
    assert Settings.from_env().stripe_max_rps is None
    monkeypatch.setenv("BILLING_STRIPE_MAX_RPS", "")
    assert Settings.from_env().stripe_max_rps is None
    monkeypatch.setenv("BILLING_STRIPE_MAX_RPS", "40")
    assert Settings.from_env().stripe_max_rps == 40
    monkeypatch.setenv("BILLING_STRIPE_MAX_RPS", "0")
    with pytest.raises(InvalidSetting, match="got '0'"):
        Settings.from_env()
    with pytest.raises(InvalidSetting):
        Settings(stripe_max_rps=0)


def test_a_ceiling_needs_the_database() -> None:
    with pytest.raises(InvalidSetting, match="DATABASE_URL"):
        stripe_client_from_settings(Settings(stripe_max_rps=10), "http://127.0.0.1:1")
