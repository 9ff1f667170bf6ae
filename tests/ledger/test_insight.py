"""Usage insight reads on the real PostgreSQL (ledger/insight.py): exact figures over a seeded history. The
log's filters and its keyset pagination (no gap, no repeat, ties on created_at), per-action summaries with cost
per use, series at UTC day and hour boundaries with their zero buckets, lifetime totals across renewals and a
pack, the projection from a known burn rate, a member's usage and limit, and bad input refused typed."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ledger import Ledger
from ledger.insight import UsageInsight, decode_cursor, encode_cursor
from models.errors import InvalidRequest, UnknownOrganization
from models.insight_types import ActionSummary, LifetimeTotals, MemberUsage, SeriesPoint, UsageEvent
from models.ledger_types import GrantPack, StartPeriod
from models.projection import Projection
from tests.conftest import T0, OrgFactory

D = Decimal
H = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def insight(ledger: Ledger) -> UsageInsight:
    return UsageInsight(ledger)


async def _seed_filters(ledger: Ledger, org: str) -> None:
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="a1", now=T0 + H)
    await ledger.debit(org, "ai_chat", tier="smart", user_id="u2", idempotency_key="a2", now=T0 + 2 * H)
    await ledger.debit(org, "lead_enrichment", quantity=2, user_id="u1", idempotency_key="l1", now=T0 + 3 * H)
    await ledger.debit(org, "sms", quantity=3, country="fr", idempotency_key="s1", now=T0 + 4 * H)
    await ledger.hold(org, "insight", tier="smart", user_id="u2", idempotency_key="h1", ttl=DAY,
                      now=T0 + 5 * H)
    await ledger.commit(org, "h1", now=T0 + 6 * H)
    await ledger.hold(org, "ai_chat", tier="pro", user_id="u2", idempotency_key="h2", now=T0 + 6 * H)
    await ledger.release(org, "h2", now=T0 + 6 * H)  # released: no usage
    await ledger.debit(org, "crm_sync", user_id="u1", idempotency_key="free", now=T0 + 6 * H)  # credit-free
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="a3", now=T0 + 7 * H)


async def _keys(insight: UsageInsight, org: str, **kw: object) -> list[str]:
    page = await insight.log(org, **kw)  # type: ignore[arg-type]
    assert page.next_cursor is None
    return [e.idempotency_key for e in page.events]


async def test_the_log_lists_every_use_newest_first_with_each_filter(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    await _seed_filters(ledger, org)
    page = await insight.log(org)
    assert [e.idempotency_key for e in page.events] == ["a3", "hold:h1", "s1", "l1", "a2", "a1"]
    assert page.next_cursor is None
    by_key = {e.idempotency_key: e for e in page.events}
    assert by_key["s1"] == UsageEvent(T0 + 4 * H, "s1", "debit", "sms", None, D("3"), "FR", None, D("1.350"), {})
    assert by_key["hold:h1"] == UsageEvent(T0 + 6 * H, "hold:h1", "hold", "insight", "smart", D("1"), None, "u2",
                                           D("50.000"), {})
    assert by_key["l1"].credits == D("10.000") and by_key["l1"].quantity == D("2")
    assert all(e.at.tzinfo == UTC for e in page.events)

    assert await _keys(insight, org, action="ai_chat") == ["a3", "a2", "a1"]
    assert await _keys(insight, org, tier="smart") == ["hold:h1", "a2"]
    assert await _keys(insight, org, user_id="u1") == ["a3", "l1", "a1"]
    assert await _keys(insight, org, user_id="u2") == ["hold:h1", "a2"]
    assert await _keys(insight, org, since=T0 + 2 * H, until=T0 + 6 * H) == ["s1", "l1", "a2"]  # until excluded
    assert await _keys(insight, org, action="ai_chat", user_id="u1", until=T0 + 7 * H) == ["a1"]
    assert await _keys(insight, org, action="dti") == []
    assert await _keys(insight, org, since=T0 + 8 * H) == []


async def test_pages_follow_each_other_without_gap_or_repeat_across_equal_times(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    times = {}
    for i in range(23):  # three events to a time: page boundaries fall inside ties
        key = f"p{i:02}"
        times[key] = T0 + timedelta(minutes=i // 3)
        await ledger.debit(org, "ai_chat", tier="fast", user_id=f"u{i % 2}", idempotency_key=key, now=times[key])
    expected = sorted(times, key=lambda k: (times[k], k), reverse=True)

    seen: list[str] = []
    sizes = []
    cursor = None
    while True:
        page = await insight.log(org, limit=5, cursor=cursor)
        sizes.append(len(page.events))
        seen += [e.idempotency_key for e in page.events]
        if cursor is None:  # a newer use arriving mid-way shifts nothing of the pages that follow
            await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="newer", now=T0 + DAY)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sizes == [5, 5, 5, 5, 3]
    assert seen == expected  # every event once, in order
    assert len(set(seen)) == 23

    # A filter with the cursor: u1's events, four at a time.
    seen = []
    cursor = None
    pages = 0
    while True:
        page = await insight.log(org, user_id="u1", limit=4, cursor=cursor)
        pages += 1
        seen += [e.idempotency_key for e in page.events]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == [k for k in expected if int(k[1:]) % 2 == 1] and pages == 3  # 11 events: 4, 4, 3

    # A page that ends exactly at the last event says so: no cursor to an empty page.
    page = await insight.log(org, limit=24)
    assert len(page.events) == 24 and page.next_cursor is None
    first = await insight.log(org, limit=23)
    assert first.next_cursor is not None
    rest = await insight.log(org, limit=5, cursor=first.next_cursor)
    assert [e.idempotency_key for e in rest.events] == [expected[-1]] and rest.next_cursor is None


async def test_a_summary_per_action_with_its_cost_per_use(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    await _seed_filters(ledger, org)
    assert await insight.summary(org) == [
        ActionSummary("insight", 1, D("1"), D("50.000"), D("50.000")),
        ActionSummary("lead_enrichment", 1, D("2"), D("10.000"), D("10.000")),
        ActionSummary("ai_chat", 3, D("3"), D("7.000"), D("2.333")),  # 7 / 3
        ActionSummary("sms", 1, D("3"), D("1.350"), D("1.350")),
    ]
    assert await insight.summary(org, user_id="u2") == [
        ActionSummary("insight", 1, D("1"), D("50.000"), D("50.000")),
        ActionSummary("ai_chat", 1, D("1"), D("5.000"), D("5.000")),
    ]
    assert await insight.summary(org, since=T0 + 3 * H, until=T0 + 7 * H) == [
        ActionSummary("insight", 1, D("1"), D("50.000"), D("50.000")),
        ActionSummary("lead_enrichment", 1, D("2"), D("10.000"), D("10.000")),
        ActionSummary("sms", 1, D("3"), D("1.350"), D("1.350")),
    ]
    # Half-up once: 2 credits over 3 uses is 0.667.
    for i, qty in enumerate((1, 1, 2)):
        await ledger.debit(org, "email_validation", quantity=qty, idempotency_key=f"e{i}", now=T0 + 8 * H)
    assert await insight.summary(org, since=T0 + 8 * H) == [
        ActionSummary("email_validation", 3, D("4"), D("2.000"), D("0.667"))]
    assert await insight.summary(org, since=T0 + 9 * H) == []


def jan(d: int, h: int = 0, m: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(2026, 1, d, h, m, s, us, tzinfo=UTC)


async def test_series_buckets_are_utc_days_and_hours_with_their_zeros(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="early", now=jan(16, 5))
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="late",
                       now=jan(16, 23, 59, 59, 999000))
    await ledger.debit(org, "lead_enrichment", user_id="u2", idempotency_key="mid", now=jan(17))
    await ledger.debit(org, "ai_chat", tier="smart", user_id="u1", idempotency_key="x", now=jan(17))
    await ledger.debit(org, "sms", country="FR", idempotency_key="anon", now=jan(18, 10))
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="end", now=jan(19))

    # since 06:00 on the 16th: its day's bucket, without the 05:00 use; until the 19th, excluded.
    assert await insight.series(org, since=jan(16, 6), until=jan(19)) == [
        SeriesPoint(jan(16), None, 1, D("1.000")),
        SeriesPoint(jan(17), None, 2, D("10.000")),
        SeriesPoint(jan(18), None, 1, D("0.450")),
    ]
    assert await insight.series(org, since=jan(16, 6), until=jan(19), by="action") == [
        SeriesPoint(jan(16), "ai_chat", 1, D("1.000")),
        SeriesPoint(jan(16), "lead_enrichment", 0, D("0.000")),
        SeriesPoint(jan(16), "sms", 0, D("0.000")),
        SeriesPoint(jan(17), "ai_chat", 1, D("5.000")),
        SeriesPoint(jan(17), "lead_enrichment", 1, D("5.000")),
        SeriesPoint(jan(17), "sms", 0, D("0.000")),
        SeriesPoint(jan(18), "ai_chat", 0, D("0.000")),
        SeriesPoint(jan(18), "lead_enrichment", 0, D("0.000")),
        SeriesPoint(jan(18), "sms", 1, D("0.450")),
    ]
    assert await insight.series(org, since=jan(16, 6), until=jan(19), by="user") == [
        SeriesPoint(jan(16), "u1", 1, D("1.000")),
        SeriesPoint(jan(16), "u2", 0, D("0.000")),
        SeriesPoint(jan(16), None, 0, D("0.000")),
        SeriesPoint(jan(17), "u1", 1, D("5.000")),
        SeriesPoint(jan(17), "u2", 1, D("5.000")),
        SeriesPoint(jan(17), None, 0, D("0.000")),
        SeriesPoint(jan(18), "u1", 0, D("0.000")),
        SeriesPoint(jan(18), "u2", 0, D("0.000")),
        SeriesPoint(jan(18), None, 1, D("0.450")),
    ]
    assert await insight.series(org, since=jan(16, 6), until=jan(19), user_id="u2") == [
        SeriesPoint(jan(16), None, 0, D("0.000")),
        SeriesPoint(jan(17), None, 1, D("5.000")),
        SeriesPoint(jan(18), None, 0, D("0.000")),
    ]
    # Hours: 23:59:59.999 and midnight in different buckets, 22:00 empty.
    assert await insight.series(org, since=jan(16, 22, 30), until=jan(17, 1), bucket="hour", by="user") == [
        SeriesPoint(jan(16, 22), "u1", 0, D("0.000")),
        SeriesPoint(jan(16, 22), "u2", 0, D("0.000")),
        SeriesPoint(jan(16, 23), "u1", 1, D("1.000")),
        SeriesPoint(jan(16, 23), "u2", 0, D("0.000")),
        SeriesPoint(jan(17, 0), "u1", 1, D("5.000")),
        SeriesPoint(jan(17, 0), "u2", 1, D("5.000")),
    ]
    # Nothing in the range: the one series' zeros; grouped, no key seen, no points.
    assert await insight.series(org, since=jan(20), until=jan(22)) == [
        SeriesPoint(jan(20), None, 0, D("0.000")), SeriesPoint(jan(21), None, 0, D("0.000"))]
    assert await insight.series(org, since=jan(20), until=jan(22), by="action") == []
    # A range in another offset is the same instants: buckets stay UTC.
    paris = timezone(timedelta(hours=1))
    assert await insight.series(org, since=datetime(2026, 1, 17, 0, 30, tzinfo=paris),
                                until=datetime(2026, 1, 17, 2, tzinfo=paris), bucket="hour") == [
        SeriesPoint(jan(16, 23), None, 1, D("1.000")), SeriesPoint(jan(17, 0), None, 2, D("10.000"))]
    # The most buckets a series may have: 1000 hours is fine, 1001 is not.
    assert len(await insight.series(org, since=jan(1), until=jan(1) + 1000 * H, bucket="hour")) == 1000
    with pytest.raises(InvalidRequest, match="at most 1000 buckets"):
        await insight.series(org, since=jan(1), until=jan(1) + 1000 * H + timedelta(microseconds=1), bucket="hour")


async def test_lifetime_totals_across_two_renewals_and_a_pack(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")  # grants 10,000 at T0
    assert await insight.lifetime(org) == LifetimeTotals(org, T0, D("10000"), D("10000"), D("0"), D("0"), D("0"))
    await ledger.debit(org, "lead_enrichment", quantity=500, idempotency_key="d1", now=T0 + DAY)  # 2,500
    p2 = T0 + 31 * DAY
    await ledger.start_period(StartPeriod(org, f"{org}:renew:1", "pro", p2, p2 + 31 * DAY, p2))  # 7,500 expire
    await ledger.grant_pack(GrantPack(org, f"{org}:pack", D("500"), p2 + 4 * DAY))
    await ledger.debit(org, "lead_enrichment", quantity=2040, idempotency_key="d2", now=p2 + 9 * DAY)  # 10,200
    p3 = p2 + 31 * DAY
    await ledger.start_period(StartPeriod(org, f"{org}:renew:2", "pro", p3, p3 + 31 * DAY, p3))  # nothing left
    await ledger.debit(org, "lead_enrichment", quantity=10, idempotency_key="d3", now=p3 + DAY)  # 50
    await ledger.hold(org, "insight", tier="smart", idempotency_key="h1", now=p3 + DAY)
    await ledger.commit(org, "h1", now=p3 + DAY)  # 50
    await ledger.hold(org, "insight", tier="smart", idempotency_key="h2", now=p3 + DAY)
    await ledger.release(org, "h2", now=p3 + DAY)  # nothing used
    totals = await insight.lifetime(org)
    assert totals == LifetimeTotals(org, T0, D("30500"), D("30000"), D("500"), D("12800"), D("7500"))
    # What is left is what was added, less what was used and what expired.
    bal = await ledger.balance(org, now=p3 + DAY)
    assert (bal.plan, bal.topup) == (D("9900"), D("300"))
    assert bal.available == totals.added - totals.used - totals.expired


async def test_the_projection_extends_the_periods_burn_rate(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")  # 10,000 credits, T0 .. T0 + 31 days
    await ledger.debit(org, "lead_enrichment", quantity=248, idempotency_key="d", now=T0 + DAY)  # 1,240
    now = T0 + timedelta(days=3, hours=2, minutes=24)  # 3.1 days: a tenth of the period
    assert await insight.projection(org, now=now) == Projection(
        T0, T0 + 31 * DAY, now, D("10000"), D("1240"), burn_per_day=D("400"), projected=D("12400"),
        runs_out_at=T0 + 25 * DAY, exceeds=True, runway_alert_due=True)
    # Later, at the same use: the rate is lower, the allocation lasts.
    later = T0 + timedelta(days=15.5)
    p = await insight.projection(org, now=later)
    assert p is not None
    assert (p.burn_per_day, p.projected, p.runs_out_at, p.exceeds, p.runway_alert_due) == (
        D("80"), D("2480"), None, False, False)
    # The ledger's clock when no time is given.
    assert (await UsageInsight(Ledger(ledger.pool, clock=lambda: now)).projection(org)) == \
        await insight.projection(org, now=now)


async def test_a_members_usage_limit_and_what_remains(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    await ledger.set_user_limit(org, "u1", D("100"))
    await ledger.set_user_limit(org, "*", D("30"))
    await ledger.debit(org, "lead_enrichment", quantity=3, user_id="u1", idempotency_key="a", now=T0 + H)
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="b", now=T0 + H)
    await ledger.debit(org, "ai_chat", tier="smart", user_id="u2", idempotency_key="c", now=T0 + H)
    now = T0 + 2 * H
    end = T0 + 31 * DAY
    assert await insight.member_usage(org, "u1", now=now) == MemberUsage(
        org, "u1", T0, end, D("16"), D("100"), "user", D("84"),
        [ActionSummary("lead_enrichment", 1, D("3"), D("15"), D("15")),
         ActionSummary("ai_chat", 1, D("1"), D("1"), D("1"))])
    assert await insight.member_usage(org, "u2", now=now) == MemberUsage(
        org, "u2", T0, end, D("5"), D("30"), "default", D("25"), [ActionSummary("ai_chat", 1, D("1"), D("5"), D("5"))])
    assert await insight.member_usage(org, "u3", now=now) == MemberUsage(
        org, "u3", T0, end, D("0"), D("30"), "default", D("30"), [])
    # The next period counts afresh.
    p2 = T0 + 31 * DAY
    await ledger.start_period(StartPeriod(org, f"{org}:renew", "pro", p2, p2 + 31 * DAY, p2))
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="d", now=p2 + H)
    assert await insight.member_usage(org, "u1", now=p2 + 2 * H) == MemberUsage(
        org, "u1", p2, p2 + 31 * DAY, D("1"), D("100"), "user", D("99"), [ActionSummary("ai_chat", 1, D("1"), D("1"),
                                                                                        D("1"))])
    # A limit used past (a limit lowered below the use): nothing remains, never a negative.
    await ledger.set_user_limit(org, "u1", D("0.5"))
    assert (await insight.member_usage(org, "u1", now=p2 + 2 * H)).remaining == D("0")

    # No limit in the organization: none, and nothing said to remain.
    free = await new_org("pro")
    await ledger.debit(free, "ai_chat", tier="fast", user_id="u1", idempotency_key="a", now=T0 + H)
    assert await insight.member_usage(free, "u1", now=now) == MemberUsage(
        free, "u1", T0, end, D("1"), None, None, None, [ActionSummary("ai_chat", 1, D("1"), D("1"), D("1"))])


async def test_the_free_plans_member_usage_is_todays(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("free")
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="y", now=T0)
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="t", now=T0 + DAY)
    day = datetime(2026, 1, 16, tzinfo=UTC)
    got = await insight.member_usage(org, "u1", now=T0 + DAY)
    assert (got.period_start, got.period_end, got.used) == (day, day + DAY, D("1"))
    p = await insight.projection(org, now=T0 + DAY)  # the day's: 1 credit in 12 hours, 2 by midnight
    assert p is not None and (p.allocation, p.consumed, p.projected) == (D("50"), D("1"), D("2"))


async def test_bad_input_is_refused_typed(ledger: Ledger, new_org: OrgFactory, insight: UsageInsight) -> None:
    org = await new_org("pro")
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="a", now=T0)
    for limit in (0, 1001, -1, True, "5", 2.0):
        with pytest.raises(InvalidRequest, match="limit"):
            await insight.log(org, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="before since"):
        await insight.log(org, since=T0, until=T0 - H)
    with pytest.raises(InvalidRequest, match="before since"):
        await insight.summary(org, since=T0, until=T0 - H)
    with pytest.raises(InvalidRequest, match="before since"):
        await insight.series(org, since=T0, until=T0 - H)
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        await insight.log(org, since=datetime(2026, 1, 1))
    with pytest.raises(InvalidRequest, match="grouped by"):
        await insight.series(org, since=T0, until=T0 + DAY, by="tier")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="grouped by"):
        await insight.series(org, since=T0, until=T0 + DAY, by=["action"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="'day' or 'hour'"):
        await insight.series(org, since=T0, until=T0 + DAY, bucket="week")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="at most 1000 buckets"):
        await insight.series(org, since=T0, until=T0 + 1001 * DAY)
    with pytest.raises(InvalidRequest, match="tag"):
        await insight.log(org, tags={"Campaign": "x"})
    naive = base64.urlsafe_b64encode(b"2026-01-15T12:00:00|a").decode()
    for cursor in ("!!!", "", "bm90IGEgY3Vyc29y", naive, encode_cursor(T0, "a")[:-3], "x" * 500, 42):
        with pytest.raises(InvalidRequest, match="cursor"):
            await insight.log(org, cursor=cursor)  # type: ignore[arg-type]
    assert decode_cursor(encode_cursor(T0, "hold:a")) == (T0, "hold:a")
    for what, fmt in (("invoices", "csv"), ("usage", "xml"), (["usage"], "csv")):
        with pytest.raises(InvalidRequest, match="export"):
            await insight.export(org, what=what, fmt=fmt)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="org_id"):
        await insight.lifetime("")
    with pytest.raises(InvalidRequest, match="user_id"):
        await insight.member_usage(org, "")
    # An unknown organization, whichever read.
    for call in (insight.log("nobody"), insight.summary("nobody"), insight.lifetime("nobody"),
                 insight.series("nobody", since=T0, until=T0 + DAY), insight.projection("nobody"),
                 insight.member_usage("nobody", "u1"), insight.export("nobody", what="usage", fmt="csv")):
        with pytest.raises(UnknownOrganization):
            await call
    # The reads changed nothing.
    assert [e.idempotency_key for e in (await insight.log(org)).events] == ["a"]


async def test_the_log_filters_on_tags_every_given_one_matching(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    spring_fr = {"campaign": "spring", "country": "FR"}
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="t1", tags=spring_fr, now=T0 + H)
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="t2", tags={"campaign": "spring"}, now=T0 + 2 * H)
    await ledger.debit(org, "lead_enrichment", idempotency_key="t3", tags={"campaign": "autumn", "result": "won"},
                       now=T0 + 3 * H)
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="t4", now=T0 + 4 * H)
    await ledger.hold(org, "insight", tier="smart", idempotency_key="h1", tags={"campaign": "spring", "result": "won"},
                      now=T0 + 5 * H)
    await ledger.commit(org, "h1", now=T0 + 5 * H)

    page = await insight.log(org)
    assert [(e.idempotency_key, e.tags) for e in page.events] == [
        ("hold:h1", {"campaign": "spring", "result": "won"}), ("t4", {}),
        ("t3", {"campaign": "autumn", "result": "won"}), ("t2", {"campaign": "spring"}), ("t1", spring_fr)]
    assert await _keys(insight, org, tags={"campaign": "spring"}) == ["hold:h1", "t2", "t1"]
    assert await _keys(insight, org, tags={"campaign": "spring", "result": "won"}) == ["hold:h1"]
    assert await _keys(insight, org, tags={"result": "won"}) == ["hold:h1", "t3"]
    assert await _keys(insight, org, tags={"campaign": "winter"}) == []
    assert await _keys(insight, org, tags={"country": "fr"}) == []  # values match exactly
    assert await _keys(insight, org, tags={}) == ["hold:h1", "t4", "t3", "t2", "t1"]
    assert await _keys(insight, org, tags={"campaign": "spring"}, action="ai_chat") == ["t2", "t1"]
    # Pages of one, filtered: the cursor keeps to the filter.
    keys, cursor = [], None
    while True:
        p = await insight.log(org, tags={"campaign": "spring"}, limit=1, cursor=cursor)
        keys += [e.idempotency_key for e in p.events]
        if (cursor := p.next_cursor) is None:
            break
    assert keys == ["hold:h1", "t2", "t1"]
