"""Shared fixtures: one embedded PostgreSQL per test session, migrated by Alembic (never create_all),
and an invariant check of the whole ledger after every test."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ledger import Ledger
from ledger.migrate import migrate
from ledger.quotas import Quotas
from models.ledger_types import StartPeriod
from stack.postgres import start_embedded
from testkit import TestKit, start_testkit
from tests.support.invariants import violations

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url is None:
        root = Path(tempfile.mkdtemp(prefix="billing-test-"))
        url = start_embedded(root / "pg", delete_on_exit=True)
    migrate(url)
    return url


@pytest.fixture(scope="session")
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    led = await Ledger.open(database_url, pool_size=8)
    yield led
    await led.close()


@pytest.fixture(autouse=True)
async def ledger_invariants(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "database_url" not in request.fixturenames:
        return
    url = request.getfixturevalue("database_url")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        broken = await violations(conn)
    assert not broken, f"ledger invariants broken: {broken}"


_orgs = itertools.count(1)
OrgFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def new_org(ledger: Ledger, request: pytest.FixtureRequest) -> OrgFactory:
    """Open a wallet on `plan` with a fresh period starting at `start`; returns its org id."""

    async def make(plan: str = "pro", start: datetime = T0, days: int = 31) -> str:
        org = f"{request.node.name[:40].strip('_')}-{next(_orgs)}".replace("[", "-").replace("]", "")
        end = None if plan == "free" else start + timedelta(days=days)
        await ledger.start_period(StartPeriod(org, f"{org}:{start.isoformat()}:start", plan, start, end, start))
        return org

    return make


@pytest.fixture
def quotas(ledger: Ledger) -> Quotas:
    """The quotas of the session's ledger (its catalog, its clock)."""
    return Quotas(ledger)



@pytest.fixture(scope="module")
async def kit(database_url: str) -> AsyncIterator[TestKit]:
    """The whole stack with a time-skipping clock (testkit.py), shared by the tests of one module: each test
    uses organizations of its own, and time only moves forward.

    One kit per module, not per session: each `advance` renews every subscription the kit's worker runs, so
    on one kit for the whole suite the last modules' advances renewed some 160 other subscriptions each month
    (the suite took 40 min, and a 31-day advance outlasted the test server's RPC deadline). A kit starts in
    about 1.3 s on this machine; the ~40 modules that use one pay under a minute for it."""
    async with start_testkit(database_url=database_url) as k:
        yield k
        # Endpoints left registered point at receivers gone with their test: the next kit delivers them nothing.
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE deleted_at IS NULL")


@pytest.fixture
def org(request: pytest.FixtureRequest) -> str:
    """A fresh organization id for this test."""
    return f"{request.node.name[:40].strip('_')}-{next(_orgs)}".replace("[", "-").replace("]", "")
