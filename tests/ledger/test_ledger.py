"""The credit ledger on the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from ledger import Ledger
from models.errors import (
    ConcurrencyLimitExceeded,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    TierNotAvailable,
    UnknownOrganization,
    UsageGuardPaused,
    UserLimitExceeded,
)
from models.ledger_types import ChangePlan, GrantPack, StartPeriod
from tests.conftest import T0, OrgFactory

D = Decimal


async def entry_count(ledger: Ledger, org: str) -> int:
    return len(await ledger.transactions(org))


async def test_debit_draws_plan_bucket_and_balance_is_exact(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    r = await ledger.debit(org, "ai_chat", tier="smart", idempotency_key="k1", now=T0)
    assert (r.cost, r.available, r.replayed) == (D("5"), D("9995"), False)
    bal = await ledger.balance(org, now=T0)
    assert (bal.available, bal.plan, bal.topup, bal.allocation, bal.consumed_this_period) == (
        D("9995"), D("9995"), D("0"), D("10000"), D("5"))
    assert bal.plan_name == "pro"


async def test_bucket_order_daily_then_packs_oldest_first(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")
    await ledger.grant_pack(GrantPack(org, "pack-a", D("500"), T0))
    await ledger.grant_pack(GrantPack(org, "pack-b", D("1000"), T0 + timedelta(seconds=1)))
    # 60 credits: today's 50 free credits (they expire first), then 10 from the oldest pack.
    await ledger.debit(org, "insight", tier="fast", quantity=6, idempotency_key="d1", now=T0)
    draws = [(t.bucket, t.credits) for t in await ledger.transactions(org) if t.kind == "debit"]
    assert draws == [("daily:2026-01-15", D("-50")), ("pack-a", D("-10"))]
    # 500 more: pack-a's remaining 490, then 10 from pack-b.
    await ledger.debit(org, "lead_enrichment", quantity=100, idempotency_key="d2", now=T0)
    draws = [(t.bucket, t.credits) for t in await ledger.transactions(org) if t.ref == "d2"]
    assert draws == [("pack-a", D("-490")), ("pack-b", D("-10"))]
    bal = await ledger.balance(org, now=T0)
    assert (bal.plan, bal.topup, bal.available) == (D("0"), D("990"), D("990"))


async def test_plan_bucket_before_packs_and_expiry_at_period_end(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("starter", days=31)
    await ledger.grant_pack(GrantPack(org, "p1", D("500"), T0))
    await ledger.debit(org, "lead_enrichment", quantity=10, idempotency_key="d1", now=T0)
    bal = await ledger.balance(org, now=T0)
    assert (bal.plan, bal.topup) == (D("2950"), D("500"))
    # Past the period end the plan credits are gone from the balance without any write...
    later = T0 + timedelta(days=32)
    assert (await ledger.balance(org, now=later)).available == D("500")
    # ...and the next debit records their expiry explicitly before drawing from the pack.
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="d2", now=later)
    kinds = [(t.kind, t.bucket, t.credits) for t in await ledger.transactions(org, since=later)]
    assert kinds == [("expire", f"{org}:{T0.isoformat()}:start", D("-2950")), ("debit", "p1", D("-1"))]


async def test_renewal_expires_plan_bucket_and_grants_new_allocation(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro", days=31)
    await ledger.debit(org, "insight", tier="pro", quantity=10, idempotency_key="d1", now=T0)  # 1500
    t1 = T0 + timedelta(days=31)
    req = StartPeriod(org, f"{org}:{t1.isoformat()}:renewal", "pro", t1, t1 + timedelta(days=28), t1)
    first = await ledger.start_period(req)
    again = await ledger.start_period(req)
    assert (first.available, first.replayed, again.available, again.replayed) == (
        D("10000"), False, D("10000"), True)
    expiries = [t.credits for t in await ledger.transactions(org) if t.kind == "expire"]
    assert expiries == [D("-8500")]
    bal = await ledger.balance(org, now=t1)
    assert (bal.consumed_this_period, bal.period_start) == (D("0"), t1)
    with pytest.raises(IdempotencyConflict):
        await ledger.start_period(StartPeriod(org, req.key, "starter", t1, t1 + timedelta(days=28), t1))


@pytest.mark.parametrize(
    ("action", "kwargs", "cost"),
    [
        ("credit_score", {}, D("17")),
        ("dti", {}, D("26")),
        ("email_validation", {}, D("0.5")),
        ("phone_validation", {"quantity": 3}, D("4.5")),
        ("sms", {"country": "FR", "quantity": 2}, D("0.9")),
        ("sms", {"country": "us"}, D("0.05")),
        ("call_transcription", {"quantity": D("2.5")}, D("7.5")),
        ("email_generation", {"tier": "pro"}, D("30")),
        ("insight", {"tier": "smart"}, D("50")),
    ],
)
async def test_composite_and_fractional_costs(
    ledger: Ledger, new_org: OrgFactory, action: str, kwargs: dict[str, object], cost: Decimal
) -> None:
    org = await new_org("pro")
    r = await ledger.debit(org, action, idempotency_key="k", now=T0, **kwargs)  # type: ignore[arg-type]
    assert r.cost == cost
    assert (await ledger.balance(org, now=T0)).available == D("10000") - cost


async def test_credit_free_action_is_not_metered(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    r = await ledger.debit(org, "crm_sync", idempotency_key="k", now=T0)
    assert (r.cost, r.available) == (D("0"), None)
    assert await ledger.usage(org) == []


async def test_insufficient_refuses_whole_and_writes_nothing(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")
    await ledger.debit(org, "lead_enrichment", quantity=9, idempotency_key="a", now=T0)  # 45 of 50
    before = await entry_count(ledger, org)
    with pytest.raises(InsufficientCredits) as exc:
        await ledger.debit(org, "lead_enrichment", quantity=2, idempotency_key="b", now=T0)
    assert (exc.value.cost, exc.value.available) == (D("10"), D("5"))
    assert await entry_count(ledger, org) == before
    assert (await ledger.balance(org, now=T0)).available == D("5")
    # The refused key was not consumed: the same key succeeds once there is room.
    r = await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="b", now=T0)
    assert r.available == D("0")


async def test_free_daily_credits_granted_lazily_once_per_utc_day(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")
    assert (await ledger.balance(org, now=T0 + timedelta(days=3))).available == D("50")
    await ledger.debit(org, "ai_chat", tier="fast", quantity=30, idempotency_key="a", now=T0)
    await ledger.debit(org, "ai_chat", tier="fast", quantity=10, idempotency_key="b", now=T0)
    assert (await ledger.balance(org, now=T0)).available == D("10")
    day2 = T0 + timedelta(days=1)
    assert (await ledger.balance(org, now=day2)).available == D("50")  # computed, nothing written yet
    await ledger.debit(org, "ai_chat", tier="fast", quantity=5, idempotency_key="c", now=day2)
    grants = [t.bucket for t in await ledger.transactions(org) if t.kind == "grant"]
    assert grants == ["daily:2026-01-15", "daily:2026-01-16"]
    expired = [(t.bucket, t.credits) for t in await ledger.transactions(org) if t.kind == "expire"]
    assert expired == [("daily:2026-01-15", D("-10"))]
    bal = await ledger.balance(org, now=day2)
    assert (bal.available, bal.consumed_this_period, bal.allocation) == (D("45"), D("5"), D("50"))


async def test_tier_not_in_plan_is_refused(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("starter")
    with pytest.raises(TierNotAvailable, match=r"'pro'.*starter"):
        await ledger.debit(org, "ai_chat", tier="pro", idempotency_key="k", now=T0)
    with pytest.raises(TierNotAvailable):
        await ledger.hold(org, "ai_chat", tier="ultra", idempotency_key="h", now=T0)
    assert await entry_count(ledger, org) == 1  # the grant only


async def test_debit_repeat_returns_first_result_and_conflict_changes_nothing(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    first = await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="k", now=T0)
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="other", now=T0)
    again = await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="k", now=T0)
    # The first result's charge, marked as a repeat; `available` is the balance now (one debit later).
    assert first.available is not None
    assert (again.cost, again.replayed, again.available) == (first.cost, True, first.available - 1)
    for changed in ({"tier": "smart"}, {"quantity": 2}, {"user_id": "u2"}, {"tier": "fast", "user_id": None}):
        args = {"tier": "fast", "user_id": "u1", "quantity": 1} | changed
        with pytest.raises(IdempotencyConflict):
            await ledger.debit(org, "ai_chat", idempotency_key="k", now=T0, **args)  # type: ignore[arg-type]
    assert (await ledger.balance(org, now=T0)).available == D("9998")


async def test_grant_pack_repeat_and_conflict(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    a = await ledger.grant_pack(GrantPack(org, "pack:1", D("500"), T0))
    b = await ledger.grant_pack(GrantPack(org, "pack:1", D("500"), T0))
    assert (a.replayed, b.replayed, b.available) == (False, True, D("10500"))
    with pytest.raises(IdempotencyConflict):
        await ledger.grant_pack(GrantPack(org, "pack:1", D("1000"), T0))
    with pytest.raises(UnknownOrganization):
        await ledger.grant_pack(GrantPack("nobody", "pack:1", D("500"), T0))


async def test_fifty_concurrent_debits_give_exactly_the_affordable_count(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("free")  # 50 credits today
    await ledger.grant_pack(GrantPack(org, "p", D("500"), T0))  # 550 in all
    results = await asyncio.gather(
        *(ledger.debit(org, "credit_score", idempotency_key=f"k{i}", now=T0) for i in range(50)),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(ok), len(refused)) == (32, 18)  # 32 x 17 = 544 <= 550 < 33 x 17
    assert (await ledger.balance(org, now=T0)).available == D("6")
    # And down to exactly zero: a wallet never goes negative under concurrency.
    results = await asyncio.gather(
        *(ledger.debit(org, "email_validation", idempotency_key=f"z{i}", now=T0) for i in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 12
    assert (await ledger.balance(org, now=T0)).available == D("0")


async def test_concurrent_duplicates_charge_once(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    results = await asyncio.gather(
        *(ledger.debit(org, "insight", tier="pro", idempotency_key="same", now=T0) for _ in range(20)))
    assert sum(not r.replayed for r in results) == 1
    assert {r.available for r in results} == {D("9850")}
    assert (await ledger.balance(org, now=T0)).available == D("9850")


async def test_hold_commits_on_success_and_releases_on_error(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    async with ledger.holding(org, "credit_score", idempotency_key="h1", now=T0) as h:
        assert (h.cost, h.available) == (D("17"), D("9983"))
        assert (await ledger.balance(org, now=T0)).held == D("17")
    bal = await ledger.balance(org, now=T0)
    assert (bal.held, bal.available, bal.consumed_this_period) == (D("0"), D("9983"), D("17"))
    with pytest.raises(RuntimeError):
        async with ledger.holding(org, "dti", idempotency_key="h2", now=T0):
            raise RuntimeError("the enrichment provider failed")
    assert (await ledger.balance(org, now=T0)).available == D("9983")
    usage = await ledger.usage(org)
    assert [(u.key, u.uses, u.credits) for u in usage] == [("credit_score", 1, D("17"))]


async def test_hold_repeat_conflict_and_settle_rules(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    h = await ledger.hold(org, "dti", idempotency_key="h", now=T0)
    again = await ledger.hold(org, "dti", idempotency_key="h", now=T0)
    assert (again.replayed, again.cost) == (True, h.cost)
    with pytest.raises(IdempotencyConflict):
        await ledger.hold(org, "credit_score", idempotency_key="h", now=T0)
    assert (await ledger.balance(org, now=T0)).held == D("26")
    c1 = await ledger.commit(org, "h", now=T0)
    c2 = await ledger.commit(org, "h", now=T0)
    assert (c1.replayed, c2.replayed, c2.cost) == (False, True, D("26"))
    with pytest.raises(HoldNotOpen, match="committed"):
        await ledger.release(org, "h", now=T0)
    with pytest.raises(HoldNotOpen, match="unknown"):
        await ledger.commit(org, "never-held", now=T0)
    assert (await ledger.balance(org, now=T0)).available == D("9974")


async def test_hold_past_ttl_releases_itself(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    await ledger.hold(org, "credit_score", idempotency_key="h", ttl=timedelta(minutes=5), now=T0)
    later = T0 + timedelta(minutes=6)
    assert (await ledger.balance(org, now=later)).held == D("0")  # read sees it gone
    with pytest.raises(HoldNotOpen, match="expired"):
        await ledger.commit(org, "h", now=later)
    assert (await ledger.balance(org, now=later)).available == D("10000")


async def test_open_holds_beyond_plan_concurrency_are_refused(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")  # one concurrent hold
    await ledger.hold(org, "ai_chat", tier="fast", idempotency_key="a", now=T0)
    with pytest.raises(ConcurrencyLimitExceeded) as exc:
        await ledger.hold(org, "ai_chat", tier="fast", idempotency_key="b", now=T0)
    assert exc.value.limit == 1
    await ledger.release(org, "a", now=T0)
    await ledger.hold(org, "ai_chat", tier="fast", idempotency_key="b", now=T0)


async def test_concurrency_limit_and_open_holds_in_every_answer(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("starter")  # five concurrent holds
    bal = await ledger.balance(org, now=T0)
    assert (bal.concurrency_limit, bal.concurrency_open) == (5, 0)
    a = await ledger.hold(org, "dti", idempotency_key="a", now=T0)
    b = await ledger.hold(org, "dti", idempotency_key="b", ttl=timedelta(minutes=5), now=T0)
    assert [(h.concurrency_limit, h.concurrency_open) for h in (a, b)] == [(5, 1), (5, 2)]
    again = await ledger.hold(org, "dti", idempotency_key="a", now=T0)
    assert (again.replayed, again.concurrency_open) == (True, 2)
    bal = await ledger.balance(org, now=T0)
    assert (bal.concurrency_limit, bal.concurrency_open) == (5, 2)
    # b's TTL has passed: a read does not count it (nothing written yet), the next settle releases it.
    later = T0 + timedelta(minutes=6)
    assert (await ledger.balance(org, now=later)).concurrency_open == 1
    c = await ledger.commit(org, "a", now=later)
    assert (c.concurrency_limit, c.concurrency_open) == (5, 0)
    await ledger.hold(org, "dti", idempotency_key="c", now=later)
    r = await ledger.release(org, "c", now=later)
    assert (r.status, r.concurrency_limit, r.concurrency_open) == ("released", 5, 0)
    assert (await ledger.balance(org, now=later)).concurrency_open == 0


async def test_per_user_limit_per_period(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    await ledger.set_user_limit(org, "*", D("20"))
    await ledger.set_user_limit(org, "boss", D("100"))
    await ledger.debit(org, "credit_score", user_id="u1", idempotency_key="a", now=T0)
    with pytest.raises(UserLimitExceeded) as exc:
        await ledger.debit(org, "credit_score", user_id="u1", idempotency_key="b", now=T0)
    assert (exc.value.limit, exc.value.used) == (D("20"), D("17"))
    await ledger.debit(org, "email_validation", user_id="u1", idempotency_key="c", now=T0)
    for i in range(5):
        await ledger.debit(org, "credit_score", user_id="boss", idempotency_key=f"boss{i}", now=T0)
    await ledger.debit(org, "credit_score", idempotency_key="no-user", now=T0)  # no user: no user limit
    # A new period resets what each user has used.
    t1 = T0 + timedelta(days=31)
    await ledger.start_period(StartPeriod(org, "renewal-1", "pro", t1, t1 + timedelta(days=28), t1))
    await ledger.debit(org, "credit_score", user_id="u1", idempotency_key="d", now=t1)


async def test_usage_guard_pauses_action_until_resumed(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    await ledger.set_usage_guard(org, "lead_enrichment", max_uses=3, window=timedelta(hours=1))
    for i in range(3):
        await ledger.debit(org, "lead_enrichment", idempotency_key=f"e{i}", now=T0 + timedelta(minutes=i))
    with pytest.raises(UsageGuardPaused):
        await ledger.debit(org, "lead_enrichment", idempotency_key="e3", now=T0 + timedelta(minutes=5))
    # Paused: even after the window has passed, until an admin resumes it. Other actions still run.
    with pytest.raises(UsageGuardPaused):
        await ledger.debit(org, "lead_enrichment", idempotency_key="e4", now=T0 + timedelta(hours=2))
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="chat", now=T0 + timedelta(hours=2))
    alerts = [a for a in await ledger.pending_alerts(org) if a.kind == "usage_guard_paused"]
    assert len(alerts) == 1
    assert await ledger.resume_action(org, "lead_enrichment") is True
    await ledger.debit(org, "lead_enrichment", idempotency_key="e4", now=T0 + timedelta(hours=2))
    assert (await ledger.balance(org, now=T0 + timedelta(hours=2))).consumed_this_period == D("21")


async def test_a_replayed_debit_writes_nothing_not_even_a_guard_pause(ledger: Ledger, new_org: OrgFactory) -> None:
    # The guard's check writes (the pause, its alert): a repeat of a debit that already succeeded must be
    # answered before it, or replaying the last allowed use would pause the action.
    org = await new_org("pro")
    await ledger.set_usage_guard(org, "lead_enrichment", max_uses=2, window=timedelta(hours=1))
    first = [await ledger.debit(org, "lead_enrichment", idempotency_key=f"g{i}", now=T0) for i in range(2)]
    again = await ledger.debit(org, "lead_enrichment", idempotency_key="g1", now=T0 + timedelta(minutes=1))
    assert (again.replayed, again.cost) == (True, first[1].cost)
    assert [a for a in await ledger.pending_alerts(org) if a.kind == "usage_guard_paused"] == []
    assert await ledger.resume_action(org, "lead_enrichment") is False  # it was never paused
    with pytest.raises(IdempotencyConflict):  # other content under the key: a conflict, still no pause
        await ledger.debit(org, "lead_enrichment", quantity=2, idempotency_key="g1", now=T0)
    assert await ledger.resume_action(org, "lead_enrichment") is False


async def test_alerts_at_80_and_100_percent_once_per_period(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("starter")  # 3000 credits
    await ledger.grant_pack(GrantPack(org, "p", D("500"), T0))
    await ledger.debit(org, "lead_enrichment", quantity=479, idempotency_key="a", now=T0)  # 2395
    assert await ledger.pending_alerts(org) == []
    await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="b", now=T0)  # 2400 = 80%
    await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="c", now=T0)
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["plan_80"]
    await ledger.debit(org, "lead_enrichment", quantity=150, idempotency_key="d", now=T0)  # 3155: past 100%
    await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="e", now=T0)
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["plan_80", "plan_100"]
    t1 = T0 + timedelta(days=31)
    await ledger.start_period(StartPeriod(org, "renewal-1", "starter", t1, t1 + timedelta(days=28), t1))
    await ledger.debit(org, "lead_enrichment", quantity=500, idempotency_key="f", now=t1)
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["plan_80", "plan_100", "plan_80"]


async def test_low_balance_alert_rearms_when_balance_rises(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")
    await ledger.set_low_balance_alert(org, D("20"))
    await ledger.debit(org, "lead_enrichment", quantity=7, idempotency_key="a", now=T0)  # 15 left
    await ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="b", now=T0)  # 10 left
    low = [a for a in await ledger.pending_alerts(org) if a.kind == "low_balance"]
    assert [a.detail for a in low] == ["15000"]  # once, at the crossing, not again at 10
    await ledger.grant_pack(GrantPack(org, "p", D("500"), T0))
    await ledger.debit(org, "lead_enrichment", quantity=99, idempotency_key="c", now=T0)  # 15 left
    low = [a for a in await ledger.pending_alerts(org) if a.kind == "low_balance"]
    assert [a.detail for a in low] == ["15000", "15000"]


async def test_usage_and_transactions_over_a_range(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="a", now=T0)
    await ledger.debit(org, "ai_chat", tier="pro", user_id="u2", quantity=2, idempotency_key="b", now=T0)
    await ledger.debit(org, "credit_score", user_id="u1", idempotency_key="c", now=T0 + timedelta(days=2))
    by_action = await ledger.usage(org, by="action")
    assert [(u.key, u.uses, u.quantity, u.credits) for u in by_action] == [
        ("ai_chat", 2, D("3"), D("31")), ("credit_score", 1, D("1"), D("17"))]
    by_tier = await ledger.usage(org, by="tier", until=T0 + timedelta(days=1))
    assert [(u.key, u.credits) for u in by_tier] == [("pro", D("30")), ("fast", D("1"))]
    by_user = await ledger.usage(org, by="user", since=T0 + timedelta(days=1))
    assert [(u.key, u.credits) for u in by_user] == [("u1", D("17"))]
    txs = await ledger.transactions(org, since=T0, until=T0 + timedelta(days=1))
    assert [(t.kind, t.credits) for t in txs] == [("grant", D("10000")), ("debit", D("-1")), ("debit", D("-30"))]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "teleport"}, "unknown action"),
        ({"action": "ai_chat", "tier": "galaxy"}, "unknown model tier"),
        ({"action": "ai_chat"}, "needs a model tier"),
        ({"action": "lead_enrichment", "tier": "fast"}, "not tiered"),
        ({"action": "lead_enrichment", "quantity": 0}, "positive"),
        ({"action": "lead_enrichment", "quantity": -2}, "positive"),
        ({"action": "lead_enrichment", "quantity": 1.5}, "int or Decimal"),
        ({"action": "lead_enrichment", "quantity": D("0.0001")}, "3 decimal places"),
        ({"action": "sms"}, "country"),
        ({"action": "sms", "country": "ZZ"}, "no sms price"),
        ({"action": "lead_enrichment", "idempotency_key": ""}, "idempotency_key"),
        ({"action": "lead_enrichment", "user_id": ""}, "user_id"),
    ],
)
async def test_bad_input_is_a_clear_typed_error_and_changes_nothing(
    ledger: Ledger, new_org: OrgFactory, kwargs: dict[str, object], message: str
) -> None:
    org = await new_org("pro")
    args: dict[str, object] = {"idempotency_key": "k", "now": T0} | kwargs
    with pytest.raises(InvalidRequest, match=message):
        await ledger.debit(org, **args)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=message):
        await ledger.hold(org, **args)  # type: ignore[arg-type]
    assert await entry_count(ledger, org) == 1


async def test_unknown_org_and_bad_ranges(ledger: Ledger) -> None:
    with pytest.raises(UnknownOrganization):
        await ledger.debit("ghost", "ai_chat", tier="fast", idempotency_key="k")
    with pytest.raises(UnknownOrganization):
        await ledger.balance("ghost")
    with pytest.raises(UnknownOrganization):
        await ledger.usage("ghost")
    with pytest.raises(InvalidRequest):
        await ledger.debit("", "ai_chat", tier="fast", idempotency_key="k")
    with pytest.raises(InvalidRequest, match="usage is grouped"):
        await ledger.usage("ghost", by="planet")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="before since"):
        await ledger.transactions("ghost", since=T0, until=T0 - timedelta(days=1))
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        await ledger.debit("ghost", "ai_chat", tier="fast", idempotency_key="k", now=T0.replace(tzinfo=None))


async def test_a_cancelled_debit_leaves_no_broken_connection_behind(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    for i in range(20):  # cancel debits mid-flight: the pool replaces any connection left mid-query
        task = asyncio.create_task(ledger.debit(org, "ai_chat", tier="fast", idempotency_key=f"c{i}", now=T0))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    results = await asyncio.gather(
        *(ledger.debit(org, "ai_chat", tier="fast", idempotency_key=f"after{i}", now=T0) for i in range(16)))
    assert all(not r.replayed for r in results)
    used = sum(u.credits for u in await ledger.usage(org))
    assert (await ledger.balance(org, now=T0)).available == D("10000") - used


async def test_a_batch_decides_each_debit_by_the_single_debit_rules(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("free")  # 50 credits today, fast tier only
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="first", now=T0)  # 49 left
    calls = [
        ledger.debit(org, "lead_enrichment", quantity=9, idempotency_key="a", now=T0),       # 45: ok, 4 left
        ledger.debit(org, "ai_chat", tier="smart", idempotency_key="b", now=T0),             # tier refused
        ledger.debit(org, "lead_enrichment", quantity=1, idempotency_key="c", now=T0),       # 5 > 4: refused
        ledger.debit(org, "lead_enrichment", quantity=9, idempotency_key="a", now=T0),       # repeat of a
        ledger.debit(org, "email_validation", idempotency_key="first", now=T0),              # conflict
        ledger.debit(org, "phone_validation", idempotency_key="d", now=T0),                  # 1.5: ok
        ledger.debit("nobody-here", "ai_chat", tier="fast", idempotency_key="e", now=T0),    # unknown org
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["DebitResult", "TierNotAvailable", "InsufficientCredits", "DebitResult",
                     "IdempotencyConflict", "DebitResult", "UnknownOrganization"]
    assert [(r.cost, r.replayed) for r in results if not isinstance(r, BaseException)] == [
        (D("45"), False), (D("45"), True), (D("1.5"), False)]
    assert (await ledger.balance(org, now=T0)).available == D("2.5")


async def test_a_caller_that_stops_waiting_does_not_cancel_the_batch(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    tasks = [asyncio.create_task(ledger.debit(org, "insight", tier="fast", idempotency_key=f"i{i}", now=T0))
             for i in range(10)]
    await asyncio.sleep(0)
    tasks[5].cancel()  # waiting in a batch: its debit is still decided, like a call whose reply was lost
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 1
    retry = await ledger.debit(org, "insight", tier="fast", idempotency_key="i5", now=T0)
    assert (retry.cost, retry.replayed) == (D("10"), True)  # it was charged once, in its batch
    assert [(u.key, u.uses) for u in await ledger.usage(org)] == [("insight", 10)]
    assert (await ledger.balance(org, now=T0)).available == D("9900")


async def test_two_clients_racing_on_one_wallet_never_overdraw(database_url: str, new_org: OrgFactory) -> None:
    # Two pools, like two worker processes: their fast paths race for the same row and the losers
    # fall back to the locked path. Exactly the affordable count succeeds.
    org = await new_org("free")  # 50 credits
    a, b = await Ledger.open(database_url, pool_size=4), await Ledger.open(database_url, pool_size=4)
    try:
        calls = [(a if i % 2 else b).debit(org, "phone_validation", idempotency_key=f"r{i}", now=T0)
                 for i in range(40)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await a.close()
        await b.close()
    assert sum(not isinstance(r, BaseException) for r in results) == 33  # 33 x 1.5 = 49.5 <= 50
    assert all(isinstance(r, InsufficientCredits) for r in results if isinstance(r, BaseException))


async def test_settings_refuse_bad_input_and_change_nothing(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    bad_calls = [
        (ledger.set_user_limit(org, "", D("5")), "user_id"),
        (ledger.set_user_limit(org, "u1", D("-5")), "negative"),
        (ledger.set_user_limit("ghost", "u1", D("5")), "unknown organization"),
        (ledger.set_usage_guard(org, "teleport", max_uses=3), "unknown action"),
        (ledger.set_usage_guard(org, "ai_chat", max_uses=0), "positive integer"),
        (ledger.set_usage_guard(org, "ai_chat", max_uses=3, window=timedelta(0)), "at least a second"),
        (ledger.set_low_balance_alert(org, D("-1")), "negative"),
        (ledger.set_low_balance_alert(org, D("0.0001")), "3 decimal places"),
        (ledger.resume_action(org, "teleport"), "unknown action"),
        (ledger.debit(org, "ai_chat", tier="fast", quantity=10**13, idempotency_key="huge", now=T0), "more than"),
        (ledger.hold(org, "ai_chat", tier="fast", idempotency_key="h", ttl=timedelta(0), now=T0), "ttl"),
        (ledger.grant_pack(GrantPack(org, "p", D("0"), T0)), "positive"),
        (ledger.start_period(StartPeriod(org, "sp", "pro", T0, T0, T0)), "end after its start"),
        # Absurd numbers: each raised a decimal error or a driver error (integer/bigint out of range) before.
        (ledger.debit(org, "ai_chat", tier="fast", quantity=D("1E+30"), idempotency_key="q1", now=T0), "more than"),
        (ledger.debit(org, "ai_chat", tier="fast", quantity=10**40, idempotency_key="q2", now=T0), "more than"),
        (ledger.set_user_limit(org, "u1", D("1E+30")), "more than any wallet"),
        (ledger.set_low_balance_alert(org, D("1E+30")), "more than any wallet"),
        (ledger.set_usage_guard(org, "ai_chat", max_uses=10**12), "at most"),
        (ledger.set_usage_guard(org, "ai_chat", max_uses=3, window=timedelta(days=10**7)), "at most 366 days"),
        (ledger.hold(org, "ai_chat", tier="fast", idempotency_key="h2", ttl=timedelta(days=10**7), now=T0), "ttl"),
        (ledger.grant_pack(GrantPack(org, "p2", D("1E+30"), T0)), "more than any wallet"),
    ]
    for call, message in bad_calls:
        with pytest.raises(InvalidRequest, match=message):
            await call
    bal = await ledger.balance(org, now=T0)
    assert (bal.available, bal.held) == (D("10000"), D("0"))
    assert await entry_count(ledger, org) == 1
    assert await ledger.pending_alerts(org) == []


async def test_change_plan_applies_the_upgrade_credit_rule_once(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    await ledger.grant_pack(GrantPack(org, "pack-1", Decimal(500), T0))
    await ledger.debit(org, "insight", tier="pro", quantity=20, idempotency_key="d1", now=T0)  # 3,000 of plan credits
    at = T0 + timedelta(days=10)
    up = ChangePlan(org, f"{org}:upgrade-1", "enterprise", at)
    first = await ledger.change_plan(up)
    assert (first.available, first.replayed) == (Decimal(37500), False)  # 40,000 - 3,000 consumed + 500 pack
    assert (await ledger.change_plan(up)).replayed
    with pytest.raises(IdempotencyConflict):
        await ledger.change_plan(ChangePlan(org, f"{org}:upgrade-1", "starter", at))
    bal = await ledger.balance(org, now=at)
    assert (bal.plan_name, bal.plan, bal.topup, bal.allocation, bal.consumed_this_period) == (
        "enterprise", Decimal(37000), Decimal(500), Decimal(40000), Decimal(3000))
    # Consumed beyond the new allocation: plan credits 0, never negative.
    small = await new_org("pro")
    await ledger.debit(small, "insight", tier="pro", quantity=60, idempotency_key="d1", now=T0)  # 9,000
    await ledger.change_plan(ChangePlan(small, f"{small}:down", "starter", at))
    assert (await ledger.balance(small, now=at)).plan == Decimal(0)


async def test_change_plan_after_the_period_ended_takes_the_terms_only(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("starter", days=30)
    r = await ledger.change_plan(ChangePlan(org, f"{org}:late", "pro", T0 + timedelta(days=30, seconds=5)))
    assert r.available == Decimal(0)  # the renewal grants the new allocation
    assert (await ledger.balance(org, now=T0 + timedelta(days=30, seconds=6))).plan_name == "pro"
    free = await new_org("free")
    with pytest.raises(InvalidRequest, match="no paid period"):
        await ledger.change_plan(ChangePlan(free, f"{free}:up", "pro", T0))
    with pytest.raises(InvalidRequest, match="free plan"):
        await ledger.change_plan(ChangePlan(org, f"{org}:x", "free", T0))


async def test_a_refused_plan_change_keeps_what_the_wallet_caught_up_with(ledger: Ledger, new_org: OrgFactory) -> None:
    # A free wallet with a hold past its TTL and a new UTC day: the refused change (no paid period) still
    # ran the catch-up (the hold released, the day's credits granted); the wallet row must record it, or
    # held and the plan bucket disagree with their entries (invariants I1-I3, checked after this test).
    free = await new_org("free")
    await ledger.hold(free, "ai_chat", idempotency_key="h1", tier="fast", ttl=timedelta(seconds=1), now=T0)
    later = T0 + timedelta(days=1)
    with pytest.raises(InvalidRequest, match="no paid period"):
        await ledger.change_plan(ChangePlan(free, f"{free}:up", "pro", later))
    bal = await ledger.balance(free, now=later)
    assert (bal.held, bal.available) == (Decimal(0), Decimal(50))


async def test_a_debit_key_cannot_take_a_committed_holds_usage_key(ledger: Ledger, new_org: OrgFactory) -> None:
    # A committed hold's usage is keyed 'hold:' + its key, beside the debits' keys: a debit under such a
    # key would have answered as that hold's repeat (or failed at the hold's commit).
    org = await new_org("pro")
    async with ledger.holding(org, "ai_chat", idempotency_key="h1", tier="fast", now=T0):
        pass
    with pytest.raises(InvalidRequest, match="the ledger's own"):
        await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="hold:h1", now=T0)
    assert (await ledger.balance(org, now=T0)).consumed_this_period == D("1")  # the hold's use, alone
