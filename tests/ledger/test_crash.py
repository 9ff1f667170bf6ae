"""Exactly once when the database connection dies: before the commit, and between two calls."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import psycopg

from ledger import Ledger
from tests.conftest import T0, OrgFactory

D = Decimal


async def _backend_waiting_on(conn: psycopg.AsyncConnection[Any], org: str, other_than: int = 0) -> int:
    # other_than: a backend just terminated stays listed for a moment; the retry's is another one
    for _ in range(200):
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s AND pid <> %s",
            ("%ledger_debit%", other_than))
        row = await cur.fetchone()
        if row:
            return int(row[0])
        await asyncio.sleep(0.02)
    raise AssertionError(f"no debit of {org} ever waited on the wallet lock")


async def test_a_backend_killed_before_commit_writes_nothing_and_the_retry_charges_once(
    database_url: str, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    ledger = await Ledger.open(database_url, pool_size=2)
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin, \
                await psycopg.AsyncConnection.connect(database_url) as blocker:
            # Hold the wallet lock so the debit stops after its inserts, just before its UPDATE.
            await blocker.execute("SELECT 1 FROM wallets WHERE org_id = %s FOR UPDATE", (org,))
            debit = asyncio.create_task(
                ledger.debit(org, "credit_score", idempotency_key="crash-1", now=T0))
            first = await _backend_waiting_on(admin, org)
            await admin.execute("SELECT pg_terminate_backend(%s)", (first,))  # the crash
            await _backend_waiting_on(admin, org, other_than=first)  # the pool's retry, on a fresh connection
            await blocker.commit()
            result = await debit
        assert (result.cost, result.replayed, result.available) == (D("17"), False, D("9983"))
        usage = await ledger.usage(org)
        assert [(u.key, u.uses) for u in usage] == [("credit_score", 1)]
        assert [t.kind for t in await ledger.transactions(org)] == ["grant", "debit"]
    finally:
        await ledger.close()


async def test_a_reply_lost_after_commit_is_answered_as_a_repeat(database_url: str, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    ledger = await Ledger.open(database_url, pool_size=2)
    try:
        await ledger.debit(org, "dti", idempotency_key="lost-reply", now=T0)
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            # Every pooled connection dies (a failover, a restart): the next calls still go through.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND state = 'idle'")
        again = await ledger.debit(org, "dti", idempotency_key="lost-reply", now=T0)
        assert (again.cost, again.replayed) == (D("26"), True)
        assert (await ledger.balance(org, now=T0)).available == D("9974")
    finally:
        await ledger.close()
