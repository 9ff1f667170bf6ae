"""Auto-recharge on the real embedded PostgreSQL: the settings store (activities/auto_recharge.py), and
the threshold crossing and its 15-minute lease decided inside the debit (0003_auto_recharge.sql).

A "pro" wallet opens with 10,000 credits; `insight` at tier "pro" costs 10 x 15 = 150 credits, and
`lead_enrichment` costs 5 credits a unit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from ledger import Ledger
from ledger.auto_recharge import AutoRecharges
from models.auto_recharge import LEASE
from models.auto_recharge_types import (
    AutoRechargeSettings,
    DisableRecharge,
    PlanRecharge,
    RechargeContext,
    SettleRecharge,
    SettleResult,
)
from models.catalog import CATALOGS
from models.errors import InsufficientCredits, InvalidRequest, UnknownOrganization
from models.ledger_types import DebitResult, GrantPack
from tests.conftest import T0, OrgFactory

D = Decimal
T1 = T0 + timedelta(hours=1)
MIN = timedelta(minutes=1)


async def insight(ledger: Ledger, org: str, key: str, now: datetime, quantity: int = 1) -> DebitResult:
    """150 credits a unit."""
    return await ledger.debit(org, "insight", tier="pro", quantity=quantity, idempotency_key=key, now=now)


async def enrich(ledger: Ledger, org: str, key: str, now: datetime, quantity: int) -> DebitResult:
    """5 credits a unit."""
    return await ledger.debit(org, "lead_enrichment", quantity=quantity, idempotency_key=key, now=now)


async def armed(ledger: Ledger, new_org: OrgFactory, threshold: int = 9000, plan: str = "pro") -> str:
    org = await new_org(plan)
    await AutoRecharges(ledger).set(org, threshold=D(threshold), pack="500", spending_limit_cents=5000, now=T0)
    return org


# -- the crossing and its lease ---------------------------------------------------------------------------


async def test_without_auto_recharge_debits_never_trigger(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    results = [await insight(ledger, org, f"k{i}", T0 + i * MIN, quantity=6) for i in range(11)]  # 900 each
    assert [r.available for r in results] == [D(10000 - 900 * (i + 1)) for i in range(11)]
    assert [r.recharge_triggered for r in results] == [False] * 11
    last = await enrich(ledger, org, "last", T0 + 20 * MIN, quantity=20)  # 100 -> 0
    assert (last.available, last.recharge_triggered) == (D(0), False)


async def test_debit_above_or_at_threshold_does_not_trigger(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    above = await insight(ledger, org, "k1", T0, quantity=6)           # 10000 - 900 = 9100
    assert (above.available, above.recharge_triggered) == (D(9100), False)
    at = await enrich(ledger, org, "k2", T0 + MIN, quantity=20)        # 9100 - 100 = 9000: not under
    assert (at.available, at.recharge_triggered) == (D(9000), False)
    under = await enrich(ledger, org, "k3", T0 + 2 * MIN, quantity=1)  # 8995: under
    assert (under.available, under.recharge_triggered) == (D(8995), True)


async def test_first_crossing_triggers_then_lease_holds_15_minutes_then_triggers_again(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await armed(ledger, new_org)
    assert LEASE == timedelta(minutes=15)
    r = await insight(ledger, org, "k1", T0, quantity=6)
    assert (r.available, r.recharge_triggered) == (D(9100), False)
    r = await insight(ledger, org, "k2", T1)
    assert (r.available, r.recharge_triggered) == (D(8950), True)
    r = await insight(ledger, org, "k3", T1 + MIN)
    assert (r.available, r.recharge_triggered) == (D(8800), False)
    r = await insight(ledger, org, "k4", T1 + LEASE - timedelta(microseconds=1))
    assert (r.available, r.recharge_triggered) == (D(8650), False)
    r = await insight(ledger, org, "k5", T1 + LEASE)  # the lease ran out: asked again
    assert (r.available, r.recharge_triggered) == (D(8500), True)
    r = await insight(ledger, org, "k6", T1 + LEASE + MIN)  # under the new lease
    assert (r.available, r.recharge_triggered) == (D(8350), False)
    r = await insight(ledger, org, "k7", T1 + 2 * LEASE + MIN)  # long after: asked again
    assert (r.available, r.recharge_triggered) == (D(8200), True)
    assert (await ledger.balance(org, now=T1 + 2 * LEASE + MIN)).available == D(8200)


async def test_a_hold_that_reserves_under_the_threshold_triggers_like_a_debit(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await armed(ledger, new_org)
    first = await ledger.hold(org, "insight", tier="pro", quantity=6, idempotency_key="h1", now=T0)  # 9100
    assert (first.available, first.recharge_triggered) == (D(9100), False)
    crossing = await ledger.hold(org, "insight", tier="pro", quantity=1, idempotency_key="h2", now=T0)  # 8950
    assert (crossing.available, crossing.recharge_triggered) == (D(8950), True)
    again = await ledger.hold(org, "insight", tier="pro", quantity=1, idempotency_key="h2", now=T0 + MIN)
    assert (again.replayed, again.recharge_triggered) == (True, False)  # a repeat asks nothing
    under_lease = await insight(ledger, org, "k1", T0 + MIN)  # the hold took the lease
    assert (under_lease.available, under_lease.recharge_triggered) == (D(8800), False)
    await ledger.release(org, "h1", now=T0 + 2 * MIN)
    await ledger.commit(org, "h2", now=T0 + 2 * MIN)


async def test_free_org_crossing_triggers_and_a_new_day_refills_above_it(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await armed(ledger, new_org, threshold=40, plan="free")  # 50 free credits a UTC day
    chat = "ai_chat"
    r = await ledger.debit(org, chat, tier="fast", quantity=10, idempotency_key="k1", now=T0)
    assert (r.available, r.recharge_triggered) == (D(40), False)
    r = await ledger.debit(org, chat, tier="fast", quantity=1, idempotency_key="k2", now=T0 + MIN)
    assert (r.available, r.recharge_triggered) == (D(39), True)
    r = await ledger.debit(org, chat, tier="fast", quantity=1, idempotency_key="k3", now=T0 + 2 * MIN)
    assert (r.available, r.recharge_triggered) == (D(38), False)
    next_day = T0 + timedelta(days=1)  # today's 50 again: above 40
    r = await ledger.debit(org, chat, tier="fast", quantity=1, idempotency_key="k4", now=next_day)
    assert (r.available, r.recharge_triggered) == (D(49), False)
    r = await ledger.debit(org, chat, tier="fast", quantity=10, idempotency_key="k5", now=next_day + MIN)
    assert (r.available, r.recharge_triggered) == (D(39), True)


async def test_refused_debit_does_not_take_the_lease(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    r = await enrich(ledger, org, "drain", T0, quantity=1980)  # 10000 - 9900 = 100, no auto-recharge yet
    assert (r.available, r.recharge_triggered) == (D(100), False)
    await AutoRecharges(ledger).set(org, threshold=D(9000), pack="500", spending_limit_cents=5000, now=T0)
    with pytest.raises(InsufficientCredits):
        await insight(ledger, org, "too-big", T1)  # 150 > 100
    r = await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="small", now=T1 + MIN)  # 1 credit
    assert (r.available, r.recharge_triggered) == (D(99), True)


async def test_new_settings_rearm_a_held_lease(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    assert (await insight(ledger, org, "k1", T1, quantity=7)).recharge_triggered is True   # 8950
    assert (await insight(ledger, org, "k2", T1 + MIN)).recharge_triggered is False        # leased
    await AutoRecharges(ledger).set(org, threshold=D(9500), pack="1000", spending_limit_cents=9000, now=T1 + MIN)
    r = await insight(ledger, org, "k3", T1 + 2 * MIN)
    assert (r.available, r.recharge_triggered) == (D(8650), True)


async def test_twenty_concurrent_debits_under_threshold_trigger_exactly_once(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await armed(ledger, new_org)
    r = await enrich(ledger, org, "to-9000", T0, quantity=200)  # exactly at the threshold
    assert (r.available, r.recharge_triggered) == (D(9000), False)
    results = await asyncio.gather(*(insight(ledger, org, f"c{i}", T1) for i in range(20)))
    assert sorted(r.available for r in results if r.available is not None) == [
        D(9000 - 150 * n) for n in range(20, 0, -1)]
    assert sum(r.recharge_triggered for r in results) == 1
    assert (await ledger.balance(org, now=T1)).available == D(6000)


async def test_crossing_inside_a_batch_of_concurrent_debits_is_reported(
    ledger: Ledger, new_org: OrgFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await armed(ledger, new_org)
    batches: list[int] = []
    real_fetchall = ledger.pool.fetchall

    async def spy(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        rows = await real_fetchall(sql, params)
        if "ledger_debit_batch" in sql:
            batches.append(len(rows))
        return rows

    monkeypatch.setattr(ledger.pool, "fetchall", spy)
    # 100 credits each from 10000: the first (alone) leaves 9900; the 11th leaves 8900, the first under
    # 9000, and it runs in the batch of the 19 that waited for the first.
    results = await asyncio.gather(*(enrich(ledger, org, f"c{i}", T1, quantity=20) for i in range(20)))
    assert sum(batches) == 19
    assert sorted(r.available for r in results if r.available is not None) == [
        D(10000 - 100 * n) for n in range(20, 0, -1)]
    triggered = [r.available for r in results if r.recharge_triggered]
    assert triggered == [D(8900)]


async def test_replayed_triggering_debit_reports_no_trigger_and_extends_nothing(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await armed(ledger, new_org)
    first = await insight(ledger, org, "k1", T1, quantity=7)  # 10000 - 1050 = 8950
    assert (first.available, first.replayed, first.recharge_triggered) == (D(8950), False, True)
    again = await insight(ledger, org, "k1", T1 + 5 * MIN, quantity=7)
    assert (again.cost, again.available, again.replayed, again.recharge_triggered) == (D(1050), D(8950), True, False)
    # The replay did not move the lease: it still ends at T1 + 15 min, not T1 + 20 min.
    r = await insight(ledger, org, "k2", T1 + LEASE)
    assert (r.available, r.recharge_triggered) == (D(8800), True)
    # A replay once the lease ran out neither triggers nor takes the lease: the next new debit does.
    late = T1 + 2 * LEASE + MIN
    again = await insight(ledger, org, "k2", late)
    assert (again.replayed, again.recharge_triggered) == (True, False)
    r = await insight(ledger, org, "k3", late)
    assert (r.available, r.recharge_triggered) == (D(8650), True)


# -- settings -------------------------------------------------------------------------------------------


async def test_set_disabled_never_triggers(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    store = AutoRecharges(ledger)
    saved = await store.set(org, threshold=D(9000), pack="500", spending_limit_cents=5000, enabled=False, now=T0)
    assert saved == AutoRechargeSettings(org, False, D(9000), "500", 5000, None)
    results = [await insight(ledger, org, f"k{i}", T1 + i * LEASE, quantity=10) for i in range(3)]
    assert [(r.available, r.recharge_triggered) for r in results] == [
        (D(8500), False), (D(7000), False), (D(5500), False)]
    assert await store.get(org) == AutoRechargeSettings(org, False, D(9000), "500", 5000, None)


async def test_get_reads_settings_back_exactly(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    store = AutoRecharges(ledger)
    saved = await store.set(org, threshold=D("1234.567"), pack="1000", spending_limit_cents=12345, now=T0)
    expected = AutoRechargeSettings(org, True, D("1234.567"), "1000", 12345, None)
    assert saved == expected
    got = await store.get(org)
    assert got == expected
    assert got is not None and isinstance(got.threshold, Decimal) and str(got.threshold) == "1234.567"
    # changed settings replace the old ones
    await store.set(org, threshold=D(0), pack="5000", spending_limit_cents=17500, now=T1)
    assert await store.get(org) == AutoRechargeSettings(org, True, D(0), "5000", 17500, None)


async def test_set_uses_the_default_spending_limit_of_50_euros(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    store = AutoRecharges(ledger)
    await store.set(org, threshold=D(100), pack="500", now=T0)
    assert await store.get(org) == AutoRechargeSettings(org, True, D(100), "500", 5000, None)


async def test_get_of_a_wallet_without_settings_is_none(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    assert await AutoRecharges(ledger).get(org) is None


async def test_unknown_organization_is_refused_everywhere(ledger: Ledger) -> None:
    store = AutoRecharges(ledger)
    with pytest.raises(UnknownOrganization):
        await store.get("no-such-org")
    with pytest.raises(UnknownOrganization):
        await store.set("no-such-org", threshold=D(100), pack="500", spending_limit_cents=5000, now=T0)
    with pytest.raises(UnknownOrganization):
        await store.plan(PlanRecharge("no-such-org", T0))
    with pytest.raises(UnknownOrganization):
        await store.settle(SettleRecharge("no-such-org", T0, 1))
    with pytest.raises(UnknownOrganization):
        await store.disable(DisableRecharge("no-such-org", "payment_failed", T0, 1))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"threshold": D(100), "pack": "750", "spending_limit_cents": 5000}, ["unknown pack", "750"]),
        ({"threshold": D(-1), "pack": "500", "spending_limit_cents": 5000}, ["negative"]),
        ({"threshold": D(100), "pack": "2500", "spending_limit_cents": 9999}, ["9999", "10000"]),
        ({"threshold": D("0.0001"), "pack": "500", "spending_limit_cents": 5000}, ["3 decimal places"]),
    ],
)
async def test_set_refuses_bad_input_and_leaves_stored_settings_unchanged(
    ledger: Ledger, new_org: OrgFactory, kwargs: dict[str, Any], words: list[str]
) -> None:
    org = await new_org("pro")
    store = AutoRecharges(ledger)
    with pytest.raises(InvalidRequest):
        await store.set(org, now=T0, **kwargs)
    assert await store.get(org) is None  # nothing stored when there was nothing
    good = AutoRechargeSettings(org, True, D(9000), "500", 5000, None)
    await store.set(org, threshold=D(9000), pack="500", spending_limit_cents=5000, now=T0)
    with pytest.raises(InvalidRequest) as info:
        await store.set(org, now=T1, **kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert await store.get(org) == good
    # the wallet's threshold is unchanged too: the next crossing of 9000 triggers
    r = await insight(ledger, org, "k1", T1, quantity=7)
    assert (r.available, r.recharge_triggered) == (D(8950), True)
    assert (await store.plan(PlanRecharge(org, T1))).settings_version == 1


# -- plan -----------------------------------------------------------------------------------------------


async def test_plan_reads_balance_settings_and_the_paid_period_as_window(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    await insight(ledger, org, "k1", T0, quantity=7)  # 8950
    await ledger.grant_pack(GrantPack(org, f"{org}:gift", D("0.5"), T0))
    ctx = await AutoRecharges(ledger).plan(PlanRecharge(org, T1))
    assert ctx == RechargeContext(
        org_id=org, enabled=True, threshold=D(9000), pack="500", spending_limit_cents=5000,
        available=D("8950.5"), spent_cents=0, window_start=T0, window_end=T0 + timedelta(days=31),
        payments_so_far=0, email=None, currency="EUR", vat_rate=D(0), settings_version=1,
        catalog_version=CATALOGS.current.version)


async def test_plan_without_settings_is_off_with_version_zero(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    ctx = await AutoRecharges(ledger).plan(PlanRecharge(org, T0))
    assert (ctx.enabled, ctx.threshold, ctx.pack, ctx.spending_limit_cents, ctx.settings_version) == (
        False, D(0), "", 0, 0)
    assert (ctx.available, ctx.window_start, ctx.window_end) == (D(10000), T0, T0 + timedelta(days=31))


async def test_plan_window_is_the_calendar_month_for_a_free_org(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")
    await AutoRecharges(ledger).set(org, threshold=D(40), pack="500", spending_limit_cents=5000, now=T0)
    ctx = await AutoRecharges(ledger).plan(PlanRecharge(org, T0))
    assert (ctx.window_start, ctx.window_end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert (ctx.available, ctx.threshold, ctx.enabled, ctx.spent_cents, ctx.payments_so_far) == (
        D(50), D(40), True, 0, 0)
    later = datetime(2026, 2, 3, 8, 0, tzinfo=UTC)
    ctx = await AutoRecharges(ledger).plan(PlanRecharge(org, later))
    assert (ctx.window_start, ctx.window_end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


async def test_plan_window_is_the_calendar_month_once_a_paid_period_ended(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await armed(ledger, new_org)
    after = T0 + timedelta(days=32)  # 2026-02-16: the period ended 2026-02-15 12:00
    ctx = await AutoRecharges(ledger).plan(PlanRecharge(org, after))
    assert (ctx.window_start, ctx.window_end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert ctx.available == D(0)  # the period's plan credits expired


async def test_plan_counts_every_attempt_but_spends_only_succeeded_charges(
    ledger: Ledger, new_org: OrgFactory, database_url: str
) -> None:
    org = await armed(ledger, new_org)
    rows = [(f"{org}:ar:1", "auto_recharge", "declined"), (f"{org}:ar:2", "auto_recharge", "pending"),
            (f"{org}:pack:x", "pack", "declined")]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for key, purpose, status in rows:
            await conn.execute(
                "INSERT INTO payments (key, org_id, purpose, amount_cents, currency, description, request, status, "
                "created_at, updated_at) VALUES (%s, %s, %s, 2500, 'EUR', 'test', '{}', %s, %s, %s)",
                (key, org, purpose, status, T1, T1))
    ctx = await AutoRecharges(ledger).plan(PlanRecharge(org, T1))
    assert (ctx.payments_so_far, ctx.spent_cents) == (2, 0)


# -- settle ---------------------------------------------------------------------------------------------


async def test_settle_still_under_threshold_reports_it_and_keeps_a_lease(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    assert (await insight(ledger, org, "k1", T1, quantity=7)).recharge_triggered is True  # 8950
    version = (await store.plan(PlanRecharge(org, T1))).settings_version
    assert version == 1
    settled = await store.settle(SettleRecharge(org, T1 + MIN, version))
    assert settled == SettleResult(org, True, D(8950))
    # the lease now runs from the settle: T1 + 16 min, not the trigger's T1 + 15 min
    r = await insight(ledger, org, "k2", T1 + LEASE)
    assert (r.available, r.recharge_triggered) == (D(8800), False)
    r = await insight(ledger, org, "k3", T1 + MIN + LEASE)
    assert (r.available, r.recharge_triggered) == (D(8650), True)


async def test_settle_after_a_pack_lifts_the_balance_rearms_at_once(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    assert (await insight(ledger, org, "k1", T1, quantity=7)).recharge_triggered is True  # 8950
    version = (await store.plan(PlanRecharge(org, T1))).settings_version
    await ledger.grant_pack(GrantPack(org, f"{org}:pack:1", D(500), T1 + MIN))           # 9450
    assert await store.settle(SettleRecharge(org, T1 + MIN, version)) == SettleResult(org, False, D(9450))
    r = await insight(ledger, org, "k2", T1 + 2 * MIN)       # 9300: above, nothing
    assert (r.available, r.recharge_triggered) == (D(9300), False)
    r = await insight(ledger, org, "k3", T1 + 3 * MIN, quantity=3)  # 8850: crosses again, well before T1 + 15
    assert (r.available, r.recharge_triggered) == (D(8850), True)


async def test_settle_with_block_holds_triggers_until_then(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    assert (await insight(ledger, org, "k1", T1, quantity=7)).recharge_triggered is True  # 8950
    version = (await store.plan(PlanRecharge(org, T1))).settings_version
    until = T1 + timedelta(hours=2)
    settled = await store.settle(SettleRecharge(org, T1 + MIN, version, blocked_until=until))
    assert settled == SettleResult(org, False, D(8950))  # blocked: no other round now
    r = await insight(ledger, org, "k2", T1 + MIN + LEASE)
    assert (r.available, r.recharge_triggered) == (D(8800), False)
    r = await insight(ledger, org, "k3", until - timedelta(microseconds=1))
    assert (r.available, r.recharge_triggered) == (D(8650), False)
    r = await insight(ledger, org, "k4", until)
    assert (r.available, r.recharge_triggered) == (D(8500), True)


async def test_settle_with_stale_version_does_not_apply_the_block(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    assert (await insight(ledger, org, "k1", T1, quantity=7)).recharge_triggered is True  # 8950
    stale = (await store.plan(PlanRecharge(org, T1))).settings_version
    await store.set(org, threshold=D(9000), pack="1000", spending_limit_cents=9000, now=T1 + MIN)
    assert (await store.plan(PlanRecharge(org, T1 + MIN))).settings_version == stale + 1
    until = T1 + timedelta(hours=2)
    settled = await store.settle(SettleRecharge(org, T1 + 2 * MIN, stale, blocked_until=until))
    assert settled == SettleResult(org, True, D(8950))  # still under the (new) threshold: look again
    r = await insight(ledger, org, "k2", T1 + 2 * MIN + LEASE - timedelta(microseconds=1))
    assert (r.available, r.recharge_triggered) == (D(8800), False)
    r = await insight(ledger, org, "k3", T1 + 2 * MIN + LEASE)  # long before the stale block's end
    assert (r.available, r.recharge_triggered) == (D(8650), True)


async def test_settle_with_stale_version_above_new_threshold_rearms(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    assert (await insight(ledger, org, "k1", T1, quantity=7)).recharge_triggered is True  # 8950
    stale = (await store.plan(PlanRecharge(org, T1))).settings_version
    await store.set(org, threshold=D(8000), pack="500", spending_limit_cents=5000, now=T1 + MIN)
    settled = await store.settle(SettleRecharge(org, T1 + 2 * MIN, stale, blocked_until=T1 + timedelta(hours=2)))
    assert settled == SettleResult(org, False, D(8950))
    r = await insight(ledger, org, "k2", T1 + 3 * MIN, quantity=7)  # 7900: under 8000
    assert (r.available, r.recharge_triggered) == (D(7900), True)


# -- disable --------------------------------------------------------------------------------------------


async def test_disable_with_current_version_turns_auto_recharge_off(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    version = (await store.plan(PlanRecharge(org, T0))).settings_version
    assert await store.disable(DisableRecharge(org, "payment_failed", T1, version)) is True
    assert await store.get(org) == AutoRechargeSettings(org, False, D(9000), "500", 5000, "payment_failed")
    results = [await insight(ledger, org, f"k{i}", T1 + i * LEASE, quantity=7) for i in range(3)]
    assert [(r.available, r.recharge_triggered) for r in results] == [
        (D(8950), False), (D(7900), False), (D(6850), False)]
    ctx = await store.plan(PlanRecharge(org, T1 + 3 * LEASE))
    assert (ctx.enabled, ctx.settings_version) == (False, version + 1)
    # the same version again changes nothing more
    assert await store.disable(DisableRecharge(org, "payment_failed", T1 + 3 * LEASE, version)) is False
    # new settings turn it back on and clear the reason
    await store.set(org, threshold=D(9000), pack="500", spending_limit_cents=5000, now=T1 + 4 * LEASE)
    assert await store.get(org) == AutoRechargeSettings(org, True, D(9000), "500", 5000, None)
    r = await insight(ledger, org, "k9", T1 + 4 * LEASE)
    assert (r.available, r.recharge_triggered) == (D(6700), True)


async def test_disable_with_stale_version_changes_nothing(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await armed(ledger, new_org)
    store = AutoRecharges(ledger)
    stale = (await store.plan(PlanRecharge(org, T0))).settings_version
    await store.set(org, threshold=D(9500), pack="1000", spending_limit_cents=4500, now=T0 + MIN)
    assert await store.disable(DisableRecharge(org, "payment_failed", T1, stale)) is False
    assert await store.get(org) == AutoRechargeSettings(org, True, D(9500), "1000", 4500, None)
    r = await insight(ledger, org, "k1", T1, quantity=4)  # 9400: under 9500
    assert (r.available, r.recharge_triggered) == (D(9400), True)


async def test_disable_without_settings_is_false(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    store = AutoRecharges(ledger)
    assert await store.disable(DisableRecharge(org, "payment_failed", T0, 0)) is False
    assert await store.get(org) is None
