"""The debits' group commit across wallets (ledger/gateway.py DEBIT_CALLS, ledger_debit_batch): debits that
arrive while the ledger's debit statements are all in flight go together in the next one, whatever their
organizations, and each is still decided by the single debit's rules and answered on its own.

Each test opens a ledger with one debit statement in flight (debit_calls=1): the first of a burst goes alone,
the rest arrive while it is in flight (asyncio runs every new task to its first await before it polls the
socket), so they form the next statement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from ledger import Ledger
from models.errors import IdempotencyConflict, InsufficientCredits, TierNotAvailable, UnknownOrganization
from models.ledger_types import DebitResult
from tests.conftest import T0, OrgFactory
from tests.support.statements import Statements

D = Decimal


async def test_debits_of_many_wallets_go_in_one_statement_each_answered_on_its_own(
    grouped: Ledger, new_org: OrgFactory
) -> None:
    orgs = [await new_org("pro") for _ in range(8)]  # 10,000 credits each
    spy = Statements(grouped)
    # The first alone; then 3 debits of orgs[1] and 1 of each other organization, in one statement.
    calls = [(orgs[0], "lead_enrichment", "first")]
    calls += [(orgs[1], "lead_enrichment", f"k{i}") for i in range(3)]
    calls += [(org, "phone_validation", "k") for org in reversed(orgs[2:])]
    results = await asyncio.gather(*(grouped.debit(org, action, idempotency_key=key, now=T0)
                                     for org, action, key in calls))
    assert spy.singles == 1 and len(spy.batches) == 1
    assert spy.batches[0] == sorted(spy.batches[0]) and len(spy.batches[0]) == 9  # grouped, in lock order
    assert [(r.org_id, r.cost, r.available, r.replayed) for r in results] == [
        (orgs[0], D(5), D(9995), False),
        (orgs[1], D(5), D(9995), False), (orgs[1], D(5), D(9990), False), (orgs[1], D(5), D(9985), False),
        *((org, D("1.5"), D("9998.5"), False) for org in reversed(orgs[2:]))]
    for org, spent in [(orgs[0], D(5)), (orgs[1], D(15)), *((org, D("1.5")) for org in orgs[2:])]:
        assert (await grouped.balance(org, now=T0)).available == D(10000) - spent
        assert sum(u.credits for u in await grouped.usage(org)) == spent


async def test_refusals_in_a_shared_statement_are_each_callers_own(grouped: Ledger, new_org: OrgFactory) -> None:
    rich, poor, smart = await new_org("pro"), await new_org("free"), await new_org("free")  # free: 50, fast only
    await grouped.debit(poor, "insight", tier="fast", idempotency_key="p0", now=T0)      # 40 left
    await grouped.debit(rich, "insight", tier="fast", idempotency_key="used", now=T0)     # 9990 left
    spy = Statements(grouped)
    calls = [
        grouped.debit(smart, "ai_chat", tier="fast", idempotency_key="first", now=T0),  # alone: 49 left
        grouped.debit(rich, "ai_chat", tier="pro", idempotency_key="r1", now=T0),       # 15: 9975
        grouped.debit(poor, "insight", tier="fast", idempotency_key="p1", now=T0),      # 10: 30 left
        grouped.debit(poor, "lead_enrichment", quantity=7, idempotency_key="p2", now=T0),  # 35 > 30: refused
        grouped.debit(smart, "ai_chat", tier="smart", idempotency_key="s1", now=T0),    # tier refused
        grouped.debit("nobody-here", "ai_chat", tier="fast", idempotency_key="n", now=T0),
        grouped.debit(rich, "email_validation", idempotency_key="used", now=T0),       # key taken: conflict
        grouped.debit(rich, "ai_chat", tier="pro", idempotency_key="r1", now=T0),       # repeat of r1
        grouped.debit(poor, "phone_validation", idempotency_key="p3", now=T0),         # 1.5: 28.5 left
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert spy.singles == 1 and len(spy.batches) == 1 and len(spy.batches[0]) == 8
    assert [type(r).__name__ for r in results] == [
        "DebitResult", "DebitResult", "DebitResult", "InsufficientCredits", "TierNotAvailable",
        "UnknownOrganization", "IdempotencyConflict", "DebitResult", "DebitResult"]
    assert isinstance(results[3], InsufficientCredits) and isinstance(results[4], TierNotAvailable)
    assert isinstance(results[5], UnknownOrganization) and isinstance(results[6], IdempotencyConflict)
    ok = [r for r in results if isinstance(r, DebitResult)]
    assert [(r.org_id, r.cost, r.available, r.replayed) for r in ok] == [
        (smart, D(1), D(49), False), (rich, D(15), D(9975), False), (poor, D(10), D(30), False),
        (rich, D(15), D(9975), True), (poor, D("1.5"), D("28.5"), False)]
    assert [(await grouped.balance(o, now=T0)).available for o in (rich, poor, smart)] == [
        D(9975), D("28.5"), D(49)]


async def test_no_overdraft_when_a_wallet_shares_its_statements(grouped: Ledger, new_org: OrgFactory) -> None:
    free, others = await new_org("free"), [await new_org("pro") for _ in range(5)]  # free: 50 credits
    calls = [grouped.debit(free if i % 2 else others[i % 5], "phone_validation", idempotency_key=f"o{i}", now=T0)
             for i in range(80)]  # 40 of 1.5 credits on the free wallet: 33 fit
    results = await asyncio.gather(*calls, return_exceptions=True)
    mine = [r for i, r in enumerate(results) if i % 2]
    assert sum(isinstance(r, DebitResult) for r in mine) == 33
    assert all(isinstance(r, InsufficientCredits) for r in mine if not isinstance(r, DebitResult))
    assert all(isinstance(r, DebitResult) for i, r in enumerate(results) if not i % 2)
    assert (await grouped.balance(free, now=T0)).available == D("0.5")


@pytest.fixture
async def poison(database_url: str) -> AsyncIterator[str]:
    """A trigger that fails any debit under a key starting `poison` (a debit the database refuses with an
    error, not a status), dropped after the test."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.idem_key LIKE 'poison%' THEN RAISE EXCEPTION 'poisoned debit %', NEW.idem_key; END IF; "
            "RETURN NEW; END $$")
        await conn.execute("CREATE TRIGGER test_poison BEFORE INSERT ON usage_events FOR EACH ROW "
                           "EXECUTE FUNCTION test_poison()")
        try:
            yield "poison"
        finally:
            await conn.execute("DROP TRIGGER test_poison ON usage_events")
            await conn.execute("DROP FUNCTION test_poison()")


async def test_a_debit_the_database_fails_fails_alone(grouped: Ledger, new_org: OrgFactory, poison: str) -> None:
    orgs = [await new_org("pro") for _ in range(4)]
    spy = Statements(grouped)
    calls = [grouped.debit(orgs[0], "insight", tier="fast", idempotency_key="first", now=T0),
             grouped.debit(orgs[1], "insight", tier="fast", idempotency_key="a", now=T0),
             grouped.debit(orgs[2], "insight", tier="fast", idempotency_key=f"{poison}-1", now=T0),
             grouped.debit(orgs[2], "insight", tier="fast", idempotency_key="b", now=T0),
             grouped.debit(orgs[3], "insight", tier="fast", idempotency_key="c", now=T0)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    # The batch failed whole (rolled back), then each of its debits went alone: only the poisoned one fails,
    # with the error it gets alone.
    assert len(spy.batches) == 1 and len(spy.failed) == 2 and spy.singles == 1 + 4
    assert isinstance(results[2], psycopg.errors.RaiseException) and "poisoned debit" in str(results[2])
    assert all(isinstance(r, DebitResult) and not r.replayed for i, r in enumerate(results) if i != 2)
    for org, spent in [(orgs[0], 10), (orgs[1], 10), (orgs[2], 10), (orgs[3], 10)]:
        assert (await grouped.balance(org, now=T0)).available == D(10000 - spent)
    assert [u.uses for u in await grouped.usage(orgs[2])] == [1]  # "b" only: nothing of the poisoned one


async def _backend_waiting_on_lock(conn: psycopg.AsyncConnection[Any], pattern: str, other_than: int = 0) -> int:
    for _ in range(500):
        cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND query LIKE %s AND pid <> %s", (pattern, other_than))
        row = await cur.fetchone()
        if row:
            return int(row[0])
        await asyncio.sleep(0.02)
    raise AssertionError(f"no statement like {pattern} ever waited on a lock")


async def test_a_batch_whose_backend_is_killed_is_charged_once(
    database_url: str, grouped: Ledger, new_org: OrgFactory
) -> None:
    orgs = [await new_org("pro") for _ in range(4)]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin, \
            await psycopg.AsyncConnection.connect(database_url) as blocker:
        # Hold orgs[3]'s wallet lock: the batch stops there, the debits of orgs[1] and orgs[2] written but not
        # committed, when its backend dies. The pool sends it again on a new connection.
        await blocker.execute("SELECT 1 FROM wallets WHERE org_id = %s FOR UPDATE", (orgs[3],))
        calls = asyncio.gather(*(grouped.debit(org, "credit_score", idempotency_key="once", now=T0)
                                 for org in orgs))
        first = await _backend_waiting_on_lock(admin, "%ledger_debit_batch%")
        await admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        await _backend_waiting_on_lock(admin, "%ledger_debit_batch%", other_than=first)  # the retry
        await blocker.commit()
        results = await calls
    assert [(r.cost, r.available, r.replayed) for r in results] == [(D(17), D(9983), False)] * 4
    for org in orgs:
        assert [(u.key, u.uses) for u in await grouped.usage(org)] == [("credit_score", 1)]
        assert (await grouped.balance(org, now=T0)).available == D(9983)


async def test_a_stuck_wallet_does_not_hold_up_other_organizations(
    database_url: str, grouped: Ledger, new_org: OrgFactory
) -> None:
    stuck, other = await new_org("pro"), await new_org("pro")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin, \
            await psycopg.AsyncConnection.connect(database_url) as blocker:
        await blocker.execute("SELECT 1 FROM wallets WHERE org_id = %s FOR UPDATE", (stuck,))
        first = asyncio.create_task(grouped.debit(stuck, "insight", tier="fast", idempotency_key="s1", now=T0))
        await _backend_waiting_on_lock(admin, "%ledger_debit%")
        second = asyncio.create_task(grouped.debit(stuck, "insight", tier="fast", idempotency_key="s2", now=T0))
        # The one statement allowed is stuck on the lock: past STALLED_AFTER_SECONDS it no longer counts, and
        # the other organization's debit goes (30 s: a deadline against a hang, not a timing).
        r = await asyncio.wait_for(grouped.debit(other, "insight", tier="fast", idempotency_key="o1", now=T0), 30)
        assert (r.available, first.done(), second.done()) == (D(9990), False, False)  # stuck's own still wait
        await blocker.commit()
        assert [(x.available, x.replayed) for x in await asyncio.gather(first, second)] == [
            (D(9990), False), (D(9980), False)]


async def test_two_processes_batching_the_same_wallets_never_deadlock(
    database_url: str, ledger: Ledger, new_org: OrgFactory
) -> None:
    # Like two API servers: each batches the same ten wallets, arriving in opposite orders. The batches take
    # the wallet locks in one order (by org_id), so no statement waits on another in a cycle (which
    # PostgreSQL would break after a second by failing one of them).
    orgs = [await new_org("pro") for _ in range(10)]
    a = await Ledger.open(database_url, pool_size=2, debit_calls=1)
    b = await Ledger.open(database_url, pool_size=2, debit_calls=1)
    spies = [Statements(a), Statements(b)]
    try:
        for r in range(5):
            await asyncio.gather(
                *(a.debit(org, "email_validation", idempotency_key=f"a{r}", now=T0) for org in orgs),
                *(b.debit(org, "email_validation", idempotency_key=f"b{r}", now=T0) for org in reversed(orgs)))
    finally:
        await a.close()
        await b.close()
    assert [s.failed for s in spies] == [[], []] and all(s.batches for s in spies)
    for org in orgs:
        assert (await ledger.balance(org, now=T0)).available == D(10000) - 10 * D("0.5")


def test_debit_calls_is_at_least_one(database_url: str) -> None:
    with pytest.raises(ValueError, match="debit_calls"):
        Ledger(pool=None, debit_calls=0)  # type: ignore[arg-type]
