"""Quotas per plan (ledger/quotas.py) on the real embedded PostgreSQL: counted per period with exact figures, the
80% warning, refused past a hard limit with nothing written, counted past a soft one, once per key, racing
records at the limit from two Ledger instances, a new period from zero, bad input refused. The catalog's numbers
(models/catalog.toml): starter sessions 5,000 soft, events 100,000 hard, enrichments 500 hard, storage 10 hard;
free (per UTC day) enrichments 10 hard, storage 0.5 hard; enterprise sessions unlimited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from ledger import Ledger
from ledger.quotas import Quotas
from models.errors import (
    IdempotencyConflict,
    InvalidRequest,
    QuotaExceeded,
    ServiceUnavailable,
    UnknownOrganization,
)
from models.ledger_types import StartPeriod
from models.quota_types import QuotaResult, QuotaUsage
from tests.conftest import T0, OrgFactory
from tests.support.db import rows

D = Decimal
AT = T0 + timedelta(hours=1)
EPOCH = str(int(T0.timestamp()))


async def written(url: str, org: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Everything a record may write: its events, the usage rows, the alerts."""
    return (await rows(url, "SELECT idem_key, quota, quantity, period_start FROM quota_events WHERE org_id = %s "
                            "ORDER BY idem_key", org),
            await rows(url, "SELECT quota, period_start, used FROM quota_usage WHERE org_id = %s ORDER BY quota", org),
            await rows(url, "SELECT kind, period_key, detail FROM alerts WHERE org_id = %s ORDER BY id", org))


async def test_a_quota_counts_with_the_80_percent_warning(
    quotas: Quotas, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("starter")
    r = await quotas.record(org, "enrichments", quantity=399, idempotency_key="e1", now=AT)
    assert r == QuotaResult(org, "enrichments", "e1", D(399), D(399), D(500), True, False, False)
    r = await quotas.record(org, "enrichments", idempotency_key="e2", now=AT)  # 400 of 500: 80%
    assert (r.quantity, r.used, r.warning) == (D(1), D(400), True)
    assert await quotas.usage(org, now=AT) == [
        QuotaUsage("sessions", D(0), D(5000), False, 0, False, False, T0),
        QuotaUsage("events", D(0), D(100000), True, 0, False, False, T0),
        QuotaUsage("enrichments", D(400), D(500), True, 80, True, False, T0),
        QuotaUsage("storage", D(0), D(10), True, 0, False, False, T0),
    ]
    await quotas.record(org, "enrichments", idempotency_key="e3", now=AT)  # past 80%: no second alert
    assert (await written(database_url, org))[2] == [("quota_80", f"{EPOCH}:enrichments", "enrichments")]
    # Its webhook event, written by the 0012 trigger in the record's transaction.
    [(kind, data)] = await rows(database_url, "SELECT type, data FROM events WHERE org_id = %s", org)
    assert kind == "quota.usage_80"
    assert {k: data[k] for k in ("quota", "percent", "period_start")} == {
        "quota": "enrichments", "percent": 80, "period_start": "2026-01-15T12:00:00Z"}


async def test_a_hard_limit_refuses_past_it_and_writes_nothing(
    quotas: Quotas, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("starter")
    await quotas.record(org, "storage", quantity=D("9.5"), idempotency_key="s1", now=AT)
    before = await written(database_url, org)
    with pytest.raises(QuotaExceeded) as err:
        await quotas.record(org, "storage", quantity=D("0.501"), idempotency_key="s2", now=AT)
    e = err.value
    assert (e.org_id, e.quota, e.limit, e.used, e.quantity) == (org, "storage", D(10), D("9.5"), D("0.501"))
    assert "9.5 of the 10 storage of this period are used; 0.501 more would pass" in e.message
    assert await written(database_url, org) == before
    r = await quotas.record(org, "storage", quantity=D("0.5"), idempotency_key="s3", now=AT)  # exactly the limit
    assert (r.used, r.limit, r.warning) == (D(10), D(10), True)
    [u] = [u for u in await quotas.usage(org, now=AT) if u.quota == "storage"]
    assert (u.used, u.percent, u.warning, u.exceeded) == (D(10), 100, True, True)
    with pytest.raises(QuotaExceeded):  # the refused key was not recorded: it is refused again, not replayed
        await quotas.record(org, "storage", quantity=D("0.501"), idempotency_key="s2", now=AT)
    events, usage, alerts = await written(database_url, org)
    assert [k for k, *_ in events] == ["s1", "s3"] and usage == [("storage", T0, D(10))]
    assert [(k, p) for k, p, _ in alerts] == [("quota_80", f"{EPOCH}:storage"), ("quota_100", f"{EPOCH}:storage")]


async def test_a_first_record_over_a_hard_limit_is_refused(
    quotas: Quotas, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("free")  # enrichments: 10 per UTC day
    with pytest.raises(QuotaExceeded) as err:
        await quotas.record(org, "enrichments", quantity=11, idempotency_key="big", now=AT)
    assert (err.value.used, err.value.limit) == (D(0), D(10))
    assert await written(database_url, org) == ([], [], [])


async def test_a_soft_limit_counts_past_it(quotas: Quotas, new_org: OrgFactory, database_url: str) -> None:
    org = await new_org("starter")  # sessions: 5,000, soft
    await quotas.record(org, "sessions", quantity=3999, idempotency_key="a", now=AT)
    r = await quotas.record(org, "sessions", quantity=1501, idempotency_key="b", now=AT)
    assert (r.used, r.limit, r.hard, r.warning) == (D(5500), D(5000), False, True)
    [u] = [u for u in await quotas.usage(org, now=AT) if u.quota == "sessions"]
    assert u == QuotaUsage("sessions", D(5500), D(5000), False, 110, True, True, T0)
    await quotas.record(org, "sessions", quantity=10, idempotency_key="c", now=AT)
    assert (await written(database_url, org))[2] == [  # one record crossed both: each alert once
        ("quota_80", f"{EPOCH}:sessions", "sessions"), ("quota_100", f"{EPOCH}:sessions", "sessions")]
    assert [t for (t,) in await rows(database_url, "SELECT type FROM events WHERE org_id = %s ORDER BY seq", org)] \
        == ["quota.usage_80", "quota.usage_100"]


async def test_a_repeat_answers_the_first_and_another_content_is_a_conflict(
    quotas: Quotas, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("starter")
    first = await quotas.record(org, "events", quantity=3, idempotency_key="k", now=AT)
    await quotas.record(org, "events", quantity=2, idempotency_key="other", now=AT)
    again = await quotas.record(org, "events", quantity=D("3.000"), idempotency_key="k", now=AT + timedelta(days=1))
    assert again == QuotaResult(org, "events", "k", D(3), D(5), D(100000), True, True, False)
    assert first.replayed is False and first.used == D(3)
    before = await written(database_url, org)
    with pytest.raises(IdempotencyConflict):
        await quotas.record(org, "events", quantity=4, idempotency_key="k", now=AT)
    with pytest.raises(IdempotencyConflict):
        await quotas.record(org, "sessions", quantity=3, idempotency_key="k", now=AT)
    assert await written(database_url, org) == before
    assert [u.used for u in await quotas.usage(org, now=AT) if u.quota == "events"] == [D(5)]


@pytest.fixture
async def two_ledgers(database_url: str) -> AsyncIterator[tuple[Quotas, Quotas]]:
    a, b = await Ledger.open(database_url, pool_size=5), await Ledger.open(database_url, pool_size=5)
    try:
        yield Quotas(a), Quotas(b)
    finally:
        await a.close()
        await b.close()


async def test_racing_records_at_a_hard_limit_from_two_instances(
    two_ledgers: tuple[Quotas, Quotas], new_org: OrgFactory, database_url: str
) -> None:
    a, b = two_ledgers
    org = await new_org("free")  # enrichments: 10 hard
    await a.record(org, "enrichments", quantity=9, idempotency_key="base", now=AT)
    pair = await asyncio.gather(a.record(org, "enrichments", idempotency_key="x", now=AT),
                                b.record(org, "enrichments", idempotency_key="y", now=AT), return_exceptions=True)
    assert sorted(type(r).__name__ for r in pair) == ["QuotaExceeded", "QuotaResult"]
    # 20 more racing records of 1 from 0 on the next day: exactly 10 counted, 10 refused.
    day2 = AT + timedelta(days=1)
    calls = [(a if i % 2 else b).record(org, "enrichments", idempotency_key=f"r{i}", now=day2) for i in range(20)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(r, QuotaResult) for r in results) == 10
    assert sum(isinstance(r, QuotaExceeded) for r in results) == 10
    assert sorted(r.used for r in results if isinstance(r, QuotaResult)) == [D(n) for n in range(1, 11)]
    [u] = [u for u in await a.usage(org, now=day2) if u.quota == "enrichments"]
    assert (u.used, u.exceeded) == (D(10), True)
    # The same key racing on both: one record, one replay, one event.
    org2 = await new_org("starter")
    same = await asyncio.gather(a.record(org2, "sessions", quantity=2, idempotency_key="s", now=AT),
                                b.record(org2, "sessions", quantity=2, idempotency_key="s", now=AT))
    assert sorted(r.replayed for r in same) == [False, True] and {r.used for r in same} == {D(2)}
    assert len((await written(database_url, org2))[0]) == 1


async def test_a_new_period_counts_from_zero(
    quotas: Quotas, ledger: Ledger, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("starter", days=31)
    await quotas.record(org, "enrichments", quantity=450, idempotency_key="p1", now=AT)
    renewal = T0 + timedelta(days=31)
    await ledger.start_period(StartPeriod(org, f"{org}:renewal", "starter", renewal, renewal + timedelta(days=28),
                                          renewal))
    [u] = [u for u in await quotas.usage(org, now=renewal) if u.quota == "enrichments"]
    assert (u.used, u.period_start) == (D(0), renewal)
    r = await quotas.record(org, "enrichments", quantity=450, idempotency_key="p2", now=renewal)
    assert (r.used, r.warning) == (D(450), True)  # 90% of the new period, its own alert
    _, usage, alerts = await written(database_url, org)
    assert usage == [("enrichments", T0, D(450)), ("enrichments", renewal, D(450))]
    assert [p for _, p, _ in alerts] == [f"{EPOCH}:enrichments", f"{int(renewal.timestamp())}:enrichments"]
    # The free plan's period is the UTC day.
    free = await new_org("free")
    await quotas.record(free, "enrichments", quantity=10, idempotency_key="d1", now=AT)
    midnight = datetime(2026, 1, 16, tzinfo=T0.tzinfo)
    r = await quotas.record(free, "enrichments", quantity=10, idempotency_key="d2", now=midnight)
    assert r.used == D(10)
    assert [(u.quota, u.used, u.period_start) for u in await quotas.usage(free, now=midnight)][2] == (
        "enrichments", D(10), midnight)


async def test_a_quota_the_plan_leaves_out_is_counted_without_limit(
    quotas: Quotas, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("enterprise")  # events 10,000,000 soft, storage 1,000 soft; sessions unlimited
    r = await quotas.record(org, "sessions", quantity=1_000_000, idempotency_key="s", now=AT)
    assert (r.used, r.limit, r.hard, r.warning) == (D(1_000_000), None, False, False)
    assert await quotas.usage(org, now=AT) == [
        QuotaUsage("events", D(0), D(10_000_000), False, 0, False, False, T0),
        QuotaUsage("storage", D(0), D(1000), False, 0, False, False, T0),
        QuotaUsage("sessions", D(1_000_000), None, False, None, False, False, T0),
    ]
    assert (await written(database_url, org))[2] == []


@pytest.mark.parametrize(("quota", "quantity", "message"), [
    ("widgets", 1, "unknown quota 'widgets'; known quotas: sessions, events, enrichments, storage"),
    ("Sessions", 1, "unknown quota"),
    (None, 1, "unknown quota"),
    ("sessions", 0, "above 0"),
    ("sessions", -1, "above 0"),
    ("sessions", D("0.0001"), "at most 3 decimal places"),
    ("sessions", 1.5, "an int or a Decimal"),
    ("sessions", True, "an int or a Decimal"),
    ("sessions", "1", "an int or a Decimal"),
    ("sessions", D("NaN"), "above 0"),
    ("sessions", D("Infinity"), "above 0"),
    ("sessions", 10**16, "at most"),
])
async def test_bad_input_is_refused_and_writes_nothing(
    quotas: Quotas, new_org: OrgFactory, database_url: str, quota: Any, quantity: Any, message: str
) -> None:
    org = await new_org("starter")
    with pytest.raises(InvalidRequest, match=message):
        await quotas.record(org, quota, quantity=quantity, idempotency_key="bad", now=AT)
    assert await written(database_url, org) == ([], [], [])


async def test_an_unknown_organization_is_refused(quotas: Quotas) -> None:
    with pytest.raises(UnknownOrganization):
        await quotas.record("no-such-org", "sessions", idempotency_key="k", now=AT)
    with pytest.raises(UnknownOrganization):
        await quotas.usage("no-such-org", now=AT)
    with pytest.raises(InvalidRequest):
        await quotas.record("acme", "sessions", idempotency_key="", now=AT)


async def test_a_record_kept_waiting_by_a_lock_is_refused_unwritten_and_its_retry_counts(
    quotas: Quotas, new_org: OrgFactory, database_url: str
) -> None:
    org = await new_org("starter")
    await quotas.record(org, "events", quantity=1, idempotency_key="a", now=AT)
    quotas.lock_timeout = "100ms"
    async with await psycopg.AsyncConnection.connect(database_url) as blocker:  # a transaction holding the row
        await blocker.execute("SELECT 1 FROM quota_usage WHERE org_id = %s FOR UPDATE", (org,))
        before = await written(database_url, org)
        with pytest.raises(ServiceUnavailable, match="busy with other records"):
            await quotas.record(org, "events", quantity=1, idempotency_key="b", now=AT)
        await blocker.rollback()
    assert await written(database_url, org) == before
    r = await quotas.record(org, "events", quantity=1, idempotency_key="b", now=AT)  # the retry, same key
    assert (r.used, r.replayed) == (D(2), False)
