"""Overage on the real PostgreSQL: debits and holds past the available balance up to the terms' cap, recorded as
overage entries, closed to an invoice exactly once (Ledger.close_overage). The autouse fixture checks the
invariants (I3, I6, O1, O2 among them) after every test."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger import Ledger
from ledger.gateway import _DEBIT_BATCH
from models.errors import InsufficientCredits, InvalidRequest, UnknownOrganization
from models.ledger_types import CloseOverage, GrantPack, WalletTerms
from tests.conftest import T0, OrgFactory

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
TEN = D("10")


async def _overage_org(ledger: Ledger, new_org: OrgFactory, cap: Decimal | None, left: Decimal = TEN,
                       plan: str = "pro") -> str:
    """A wallet with overage allowed up to `cap` whose plan credits are down to `left`."""
    org = await new_org(plan)
    await ledger.set_terms(org, WalletTerms(True, cap))
    allocation = (await ledger.balance(org, now=T0)).allocation
    spend = allocation - left
    if spend:
        await ledger.debit(org, "lead_enrichment", quantity=spend / 5, idempotency_key="spend", now=T0)
    return org


async def _kinds(ledger: Ledger, org: str) -> list[tuple[str, Decimal, str]]:
    return [(t.kind, t.credits, t.ref) for t in await ledger.transactions(org)]


async def test_a_debit_past_the_balance_draws_it_and_records_the_rest_as_overage(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await _overage_org(ledger, new_org, D("5000"))
    r = await ledger.debit(org, "dti", idempotency_key="d1", now=T0)  # 26: 10 from the plan, 16 overage
    assert (r.cost, r.available, r.replayed) == (D("26"), D("0"), False)
    assert (await _kinds(ledger, org))[-2:] == [("debit", D("-10"), "d1"), ("overage", D("-16"), "d1")]
    bal = await ledger.balance(org, now=T0)
    assert (bal.available, bal.plan, bal.consumed_this_period, bal.overage, bal.overage_cap) == (
        D("0"), D("0"), D("10000"), D("16"), D("5000"))
    # Usage counts the whole cost.
    assert [(u.key, u.credits) for u in await ledger.usage(org)] == [("lead_enrichment", D("9990")),
                                                                    ("dti", D("26"))]


async def test_packs_are_drawn_before_overage(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await _overage_org(ledger, new_org, None, left=D("0"))
    await ledger.grant_pack(GrantPack(org, "pack-1", D("100"), T0))
    await ledger.debit(org, "lead_enrichment", quantity=30, idempotency_key="d1", now=T0)  # 150
    assert (await _kinds(ledger, org))[-2:] == [("debit", D("-100"), "d1"), ("overage", D("-50"), "d1")]
    bal = await ledger.balance(org, now=T0)
    assert (bal.topup, bal.overage, bal.overage_cap) == (D("0"), D("50"), None)


async def test_overage_up_to_the_cap_then_refused_as_without_overage(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await _overage_org(ledger, new_org, D("100"))
    await ledger.debit(org, "lead_enrichment", quantity=20, idempotency_key="d1", now=T0)  # 100: 10 + 90 overage
    await ledger.debit(org, "phone_validation", quantity=4, idempotency_key="d2", now=T0)  # 6: overage 96
    entries = await _kinds(ledger, org)
    with pytest.raises(InsufficientCredits) as refused:
        await ledger.debit(org, "lead_enrichment", idempotency_key="d3", now=T0)  # 5: 101 > 100
    assert (refused.value.cost, refused.value.available) == (D("5"), D("0"))  # the fields as without overage
    assert await _kinds(ledger, org) == entries  # nothing written
    await ledger.debit(org, "ai_chat", tier="fast", quantity=4, idempotency_key="d3", now=T0)  # the same key, 4: ok
    assert (await ledger.balance(org, now=T0)).overage == D("100")  # exactly the cap
    with pytest.raises(InsufficientCredits):
        await ledger.debit(org, "email_validation", idempotency_key="d4", now=T0)  # 0.5 past it
    with pytest.raises(InsufficientCredits):
        await ledger.hold(org, "email_validation", idempotency_key="h1", now=T0)
    assert (await ledger.balance(org, now=T0)).overage == D("100")


async def test_without_overage_a_debit_past_the_balance_is_refused_as_before(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    await ledger.debit(org, "lead_enrichment", quantity=1998, idempotency_key="spend", now=T0)  # 10 left
    await ledger.set_terms(org, WalletTerms(False, D("1000")))  # a cap without overage allowed allows nothing
    with pytest.raises(InsufficientCredits) as refused:
        await ledger.debit(org, "dti", idempotency_key="d1", now=T0)
    assert (refused.value.cost, refused.value.available) == (D("26"), D("10"))
    bal = await ledger.balance(org, now=T0)
    assert (bal.overage, bal.overage_cap, bal.available) == (D("0"), None, D("10"))


async def test_a_replayed_debit_in_overage_charges_nothing_again(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await _overage_org(ledger, new_org, D("30"))
    first = await ledger.debit(org, "dti", idempotency_key="d1", now=T0)
    entries = await _kinds(ledger, org)
    again = await ledger.debit(org, "dti", idempotency_key="d1", now=T0)
    assert (again.cost, again.replayed) == (D("26"), True) and first.replayed is False
    assert await _kinds(ledger, org) == entries
    await ledger.debit(org, "ai_chat", tier="smart", idempotency_key="d2", now=T0)  # 5: overage 21 of 30
    await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="d3", now=T0)  # 5: overage 26
    with pytest.raises(InsufficientCredits):  # 5 more would be 31
        await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="d4", now=T0)
    # Past what the cap allows a new debit is refused, but a repeat is answered as the first, writing nothing.
    entries = await _kinds(ledger, org)
    for key, action, cost in (("d1", "dti", D("26")), ("d3", "lead_enrichment", D("5"))):
        again = await ledger.debit(org, action, idempotency_key=key, now=T0)
        assert (again.cost, again.replayed) == (cost, True)
    assert await _kinds(ledger, org) == entries
    assert (await ledger.balance(org, now=T0)).overage == D("26")


async def test_concurrent_debits_racing_at_the_cap_never_pass_it(
    ledger: Ledger, new_org: OrgFactory, database_url: str
) -> None:
    org = await _overage_org(ledger, new_org, D("100"))
    other = await Ledger.open(database_url, pool_size=4)  # a second process's ledger, racing on the same wallet
    try:
        calls = [(ledger if i % 2 else other).debit(org, "lead_enrichment", idempotency_key=f"r{i}", now=T0)
                 for i in range(60)]  # 60 x 5 credits against 10 of balance and 100 of overage
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await other.close()
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(ok), len(refused)) == (22, 38)  # 110 credits: 2 from the balance, 20 into overage
    bal = await ledger.balance(org, now=T0)
    assert (bal.available, bal.overage) == (D("0"), D("100"))


async def test_the_batch_statement_handles_overage_item_by_item(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await _overage_org(ledger, new_org, D("20"))
    n = 4  # one organization's debits in one ledger_debit_batch statement (the group commit's), 10 each
    rows = await ledger.pool.fetchall(_DEBIT_BATCH, (
        [org] * n, [f"b{i}" for i in range(n)], ["lead_enrichment"] * n, [None] * n, [D(2)] * n, [None] * n,
        [None] * n, [None] * n, [10_000] * n, [T0] * n))
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("ok", 10_000, 0), ("ok", 10_000, 0), ("ok", 10_000, 0), ("insufficient", 10_000, 0)]
    assert (await ledger.balance(org, now=T0)).overage == D("20")


async def test_holds_reserve_into_overage_commit_records_it_release_gives_it_back(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await _overage_org(ledger, new_org, D("40"))
    h1 = await ledger.hold(org, "credit_score", idempotency_key="h1", now=T0)  # 17: 10 held, 7 in overage
    assert (h1.cost, h1.available) == (D("17"), D("0"))
    h2 = await ledger.hold(org, "credit_score", idempotency_key="h2", now=T0)  # 17 in overage: 24 of 40 reserved
    assert h2.cost == D("17")
    bal = await ledger.balance(org, now=T0)
    assert (bal.held, bal.overage_held, bal.overage, bal.available) == (D("10"), D("24"), D("0"), D("0"))
    with pytest.raises(InsufficientCredits):  # 17 more: 41 > 40, the reservations count against the cap
        await ledger.hold(org, "credit_score", idempotency_key="h3", now=T0)
    with pytest.raises(InsufficientCredits):
        await ledger.debit(org, "credit_score", idempotency_key="d3", now=T0)

    c = await ledger.commit(org, "h1", now=T0)  # 10 drawn, 7 recorded as overage
    assert (c.cost, c.status) == (D("17"), "committed")
    assert [k for k in await _kinds(ledger, org) if k[2] == "hold:h1"] == [
        ("hold", D("-17"), "hold:h1"), ("release", D("17"), "hold:h1"), ("debit", D("-10"), "hold:h1"),
        ("overage", D("-7"), "hold:h1")]
    bal = await ledger.balance(org, now=T0)
    assert (bal.held, bal.overage_held, bal.overage) == (D("0"), D("17"), D("7"))

    r = await ledger.release(org, "h2", now=T0)
    assert (r.cost, r.status) == (D("0"), "released")
    bal = await ledger.balance(org, now=T0)
    assert (bal.held, bal.overage_held, bal.overage, bal.available) == (D("0"), D("0"), D("7"), D("0"))
    # What was given back can be used again: 33 left under the cap.
    await ledger.debit(org, "lead_enrichment", quantity=6, idempotency_key="d4", now=T0)  # 30
    assert (await ledger.balance(org, now=T0)).overage == D("37")
    # Repeats change nothing.
    assert (await ledger.commit(org, "h1", now=T0)).replayed is True
    assert (await ledger.release(org, "h2", now=T0)).replayed is True
    assert (await ledger.balance(org, now=T0)).overage == D("37")


async def test_an_expired_hold_gives_back_its_overage_reservation(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await _overage_org(ledger, new_org, D("20"), left=D("0"))
    await ledger.hold(org, "credit_score", idempotency_key="h1", ttl=timedelta(minutes=1), now=T0)
    assert (await ledger.balance(org, now=T0)).overage_held == D("17")
    later = T0 + timedelta(minutes=2)
    assert (await ledger.balance(org, now=later)).overage_held == D("0")  # read as released...
    await ledger.debit(org, "credit_score", idempotency_key="d1", now=later)  # ...and released by the next write
    bal = await ledger.balance(org, now=later)
    assert (bal.overage_held, bal.overage) == (D("0"), D("17"))


async def test_a_commit_after_overage_is_withdrawn_charges_only_what_the_balance_covers(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await _overage_org(ledger, new_org, D("40"))
    await ledger.hold(org, "credit_score", idempotency_key="h1", now=T0)  # 10 held, 7 in overage
    await ledger.set_terms(org, WalletTerms())  # the contract ended
    c = await ledger.commit(org, "h1", now=T0)
    assert c.cost == D("10")  # as when buckets expire under a hold: never more than the terms allow now
    bal = await ledger.balance(org, now=T0)
    assert (bal.overage, bal.overage_held, bal.available) == (D("0"), D("0"), D("0"))


async def test_alerts_at_80_and_100_fire_with_overage(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    await ledger.set_terms(org, WalletTerms(True, None))
    await ledger.debit(org, "lead_enrichment", quantity=1700, idempotency_key="d1", now=T0)  # 8,500: 85%
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["plan_80"]
    await ledger.debit(org, "lead_enrichment", quantity=400, idempotency_key="d2", now=T0)  # 2,000: 500 overage
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["plan_80", "plan_100"]
    assert (await ledger.balance(org, now=T0)).overage == D("500")
    # One debit from under 80% to past the allocation crosses both at once.
    other = await new_org("starter")
    await ledger.set_terms(other, WalletTerms(True, D("1000")))
    await ledger.debit(other, "lead_enrichment", quantity=700, idempotency_key="d1", now=T0)  # 3,500 of 3,000
    assert [a.kind for a in await ledger.pending_alerts(other)] == ["plan_80", "plan_100"]


async def test_close_overage_once_then_replayed_with_the_same_figure(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await _overage_org(ledger, new_org, D("100"))
    await ledger.debit(org, "dti", idempotency_key="d1", now=T0)  # 16 overage
    closed = await ledger.close_overage(CloseOverage(org, f"{org}:overage-1", T0))
    assert (closed.credits, closed.replayed) == (D("16"), False)
    assert (await _kinds(ledger, org))[-1] == ("overage_closed", D("16"), f"{org}:overage-1")
    assert (await ledger.balance(org, now=T0)).overage == D("0")
    # Overage recorded since: the repeat still answers 16 and changes nothing; the cap's room is back.
    await ledger.debit(org, "lead_enrichment", quantity=20, idempotency_key="d2", now=T0)  # 100 overage
    entries = await _kinds(ledger, org)
    again = await ledger.close_overage(CloseOverage(org, f"{org}:overage-1", T0 + timedelta(days=1)))
    assert (again.credits, again.replayed) == (D("16"), True)
    assert await _kinds(ledger, org) == entries
    assert (await ledger.balance(org, now=T0)).overage == D("100")
    nxt = await ledger.close_overage(CloseOverage(org, f"{org}:overage-2", T0))
    assert (nxt.credits, nxt.replayed) == (D("100"), False)
    # Nothing to close: the key records 0 (no entry), and keeps answering 0.
    zero = await ledger.close_overage(CloseOverage(org, f"{org}:overage-3", T0))
    await ledger.debit(org, "dti", idempotency_key="d3", now=T0)
    zero_again = await ledger.close_overage(CloseOverage(org, f"{org}:overage-3", T0))
    assert (zero.credits, zero.replayed, zero_again.credits, zero_again.replayed) == (D(0), False, D(0), True)
    assert [k for k in await _kinds(ledger, org) if k[0] == "overage_closed"] == [
        ("overage_closed", D("16"), f"{org}:overage-1"), ("overage_closed", D("100"), f"{org}:overage-2")]


async def test_close_overage_leaves_reservations_open(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await _overage_org(ledger, new_org, D("100"), left=D("0"))
    await ledger.debit(org, "dti", idempotency_key="d1", now=T0)                   # 26 recorded
    await ledger.hold(org, "credit_score", idempotency_key="h1", now=T0)           # 17 reserved
    assert (await ledger.close_overage(CloseOverage(org, "close-1", T0))).credits == D("26")
    await ledger.commit(org, "h1", now=T0)  # recorded now: the next close's
    assert (await ledger.close_overage(CloseOverage(org, "close-2", T0))).credits == D("17")


async def test_close_overage_refuses_bad_input(ledger: Ledger) -> None:
    with pytest.raises(UnknownOrganization):
        await ledger.close_overage(CloseOverage("no-such-org-close", "k", T0))
    with pytest.raises(InvalidRequest):
        await ledger.close_overage(CloseOverage("x", "", T0))
    with pytest.raises(InvalidRequest):
        await ledger.close_overage(CloseOverage("x", "k", T0.replace(tzinfo=None)))


async def _backend_waiting(admin: psycopg.AsyncConnection[Any], other_than: int = 0) -> int:
    for _ in range(500):
        cur = await admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s AND pid <> %s",
            ("%ledger_close_overage%", other_than))
        row = await cur.fetchone()
        if row:
            return int(row[0])
        await asyncio.sleep(0.02)
    raise AssertionError("no close ever waited")


async def _committed(admin: psycopg.AsyncConnection[Any], org: str) -> tuple[Any, ...]:
    cur = await admin.execute(
        "SELECT w.overage, (SELECT count(*) FROM ledger_entries e WHERE e.org_id = w.org_id "
        "                   AND e.kind = 'overage_closed'), "
        "       (SELECT count(*) FROM overage_closes c WHERE c.org_id = w.org_id) "
        "FROM wallets w WHERE w.org_id = %s", (org,))
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def test_a_connection_dropped_mid_close_leaves_nothing_and_the_retry_closes_once(
    database_url: str, ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await _overage_org(ledger, new_org, None, left=D("0"))
    await ledger.debit(org, "dti", idempotency_key="d1", now=T0)  # 26 overage
    key = f"{org}:overage"
    closing = await Ledger.open(database_url, pool_size=1)
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin, \
                await psycopg.AsyncConnection.connect(database_url) as blocker:
            # An uncommitted row under the same key: the close stops at its last write, the key, after its entry
            # and the wallet's update (ledger_close_overage.sql), and waits there.
            await blocker.execute("INSERT INTO overage_closes VALUES (%s, %s, 0, %s)", (org, key, T0))
            task = asyncio.create_task(closing.close_overage(CloseOverage(org, key, T0)))
            first = await _backend_waiting(admin)
            await admin.execute("SELECT pg_terminate_backend(%s)", (first,))  # the connection drops mid-close
            await _backend_waiting(admin, other_than=first)  # the pool's retry, on a fresh connection, waits too
            assert await _committed(admin, org) == (26_000, 0, 0)  # none of the first attempt stands
            await blocker.rollback()
            closed = await task
            assert (closed.credits, closed.replayed) == (D("26"), False)
            assert await _committed(admin, org) == (0, 1, 1)
        again = await ledger.close_overage(CloseOverage(org, key, T0))
        assert (again.credits, again.replayed) == (D("26"), True)
    finally:
        await closing.close()


_CLOSER = textwrap.dedent("""
    import asyncio, sys
    from datetime import datetime
    from ledger import Ledger
    from models.ledger_types import CloseOverage

    async def main() -> None:
        ledger = await Ledger.open(sys.argv[1], pool_size=1)
        await ledger.close_overage(CloseOverage(sys.argv[2], sys.argv[3], datetime.fromisoformat(sys.argv[4])))

    asyncio.run(main())
""")


async def test_a_process_killed_mid_close_leaves_all_or_nothing_and_the_retry_answers_the_figure(
    database_url: str, ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await _overage_org(ledger, new_org, None, left=D("0"))
    await ledger.debit(org, "dti", idempotency_key="d1", now=T0)  # 26 overage
    key = f"{org}:overage"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin, \
            await psycopg.AsyncConnection.connect(database_url) as blocker:
        await blocker.execute("INSERT INTO overage_closes VALUES (%s, %s, 0, %s)", (org, key, T0))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLOSER, database_url, org, key, T0.isoformat(), cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            await _backend_waiting(admin)
            os.kill(proc.pid, signal.SIGKILL)  # the worker dies mid-close, its statement in the server
            assert await proc.wait() == -signal.SIGKILL
            assert await _committed(admin, org) == (26_000, 0, 0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await blocker.rollback()
        # The orphaned statement runs to its end or not at all (the server may finish it: one transaction);
        # either way the retry under the key closes the overage once.
        closed = await ledger.close_overage(CloseOverage(org, key, T0))
        assert closed.credits == D("26")
        assert await _committed(admin, org) == (0, 1, 1)
