"""Quotas per plan (DESIGN.md section 11, models/quota_types.py): non-credit limits (seed 002's sessions, events,
enrichments, storage) counted per period of the wallet, each record once per idempotency key.

The period is the wallet's current one as `ledger_balance(org, now)` says it: the plan's month, or the free plan's
UTC day (rolled over without a write). The limits are the CURRENT catalog's (the Ledger's, as its price book), for
every organization whatever catalog version it is priced on.

One transaction per record, on the quota's own row of `quota_usage` (never the wallet's lock, so quotas do not
queue behind debits): the record's `quota_events` row first (its primary key (org, key) makes a repeat wait for
the first and then find it), then an upsert that adds the quantity only while a hard limit holds (ON CONFLICT DO
UPDATE locks the row and re-reads its newest version: two racing records at the limit, one refused), then the
alerts of the thresholds it crossed (ON CONFLICT DO NOTHING: once per period and quota), which write their
webhook events by trigger (0012). A refusal rolls back all of it: nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import LockNotAvailable

from ledger.gateway import Ledger
from models.checks import check_id, check_time, shown
from models.errors import IdempotencyConflict, InvalidRequest, QuotaExceeded, ServiceUnavailable, UnknownOrganization
from models.quota_types import (
    EXCEEDED_PERCENT,
    WARNING_PERCENT,
    QuotaResult,
    QuotaUsage,
    check_quota_amount,
    crossed,
    quota_usage,
)

# A record waits at most this long for a racing record of the same quota (failure model rule 5).
LOCK_TIMEOUT = "5s"

_PERIOD = "SELECT b.plan, b.period_start FROM ledger_balance(%s, %s) b"
# The same, first setting the transaction's lock timeout (one round trip for both).
_PERIOD_LOCKING = ("SELECT b.plan, b.period_start FROM set_config('lock_timeout', %s, true), "
                   "ledger_balance(%s, %s) b")
_EVENT = ("INSERT INTO quota_events (org_id, idem_key, quota, quantity, period_start, created_at) "
          "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1")
# Adds the quantity unless a hard limit would be passed (the WHERE of DO UPDATE reads the row's newest version,
# locked); a first record of the period inserts (record() refuses a quantity over a hard limit beforehand).
_ADD = ("INSERT INTO quota_usage AS u (org_id, quota, period_start, used) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (org_id, quota, period_start) DO UPDATE SET used = u.used + EXCLUDED.used "
        "WHERE %s::numeric IS NULL OR u.used + EXCLUDED.used <= %s::numeric RETURNING u.used")
_USED = "SELECT used FROM quota_usage WHERE org_id = %s AND quota = %s AND period_start = %s"
# period_key '{period start, epoch seconds}:{quota}' (0012), the epoch as ledger_alerts writes a plan alert's.
_ALERT = ("INSERT INTO alerts (org_id, kind, period_key, detail, created_at) "
          "VALUES (%s, %s, extract(epoch FROM %s::timestamptz)::bigint::text || ':' || %s, %s, %s) "
          "ON CONFLICT DO NOTHING")
_REPEAT = "SELECT quota, quantity, period_start FROM quota_events WHERE org_id = %s AND idem_key = %s"
_USAGE = ("SELECT b.plan, b.period_start, u.quota, u.used FROM ledger_balance(%s, %s) b "
          "LEFT JOIN quota_usage u ON u.org_id = %s AND u.period_start = b.period_start ORDER BY u.quota")


@dataclass(frozen=True)
class _Limit:
    limit: Decimal | None
    hard: bool


class _Repeat(Exception):
    """The key was recorded before: leave the transaction (rolled back) and answer from the first record."""


class Quotas:
    """Quotas of the organizations of `ledger`'s database, against `ledger.catalog`, at `ledger.clock`'s time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.lock_timeout = LOCK_TIMEOUT

    def _limit(self, plan: str, quota: str) -> _Limit:
        known = self.ledger.catalog.plans.get(plan)
        q = None if known is None else known.quotas.get(quota)
        return _Limit(None, False) if q is None else _Limit(q.limit, q.hard)

    def _now(self, now: datetime | None) -> datetime:
        return check_time("now", now) if now is not None else self.ledger.clock()

    async def record(self, org_id: str, quota: str, *, quantity: int | Decimal = 1, idempotency_key: str,
                     now: datetime | None = None) -> QuotaResult:
        """Count `quantity` of `quota` in the organization's current period, once per key. A repeat answers the
        first record's quota and quantity with the use of its period now (replayed, nothing written); the key
        with another quota or quantity is IdempotencyConflict. Past a hard limit: QuotaExceeded, nothing written.
        Bad input (an unknown quota, a quantity not above 0 or finer than 0.001): InvalidRequest."""
        check_id("org_id", org_id)
        check_id("idempotency_key", idempotency_key)
        self.ledger.catalog.check_quota(quota)
        if isinstance(quantity, str):  # the catalog's limits may be strings; a caller's quantity is a number
            raise InvalidRequest(f"quantity must be an int or a Decimal, got {shown(quantity)}")
        q = check_quota_amount("quantity", quantity)
        at = self._now(now)
        async with self.ledger.pool.connection() as conn:
            try:
                return await self._record(conn, org_id, quota, q, idempotency_key, at)
            except _Repeat:
                return await self._repeat(conn, org_id, quota, q, idempotency_key, at)
            except LockNotAvailable:
                raise ServiceUnavailable(f"{org_id}: {quota} is busy with other records (waited {self.lock_timeout}); "
                                         "nothing was recorded, retry under the same key") from None

    async def _record(self, conn: AsyncConnection[Any], org_id: str, quota: str, q: Decimal, key: str,
                      at: datetime) -> QuotaResult:
        async with conn.transaction():
            cur = await conn.execute(_PERIOD_LOCKING, (self.lock_timeout, org_id, at))
            row = await cur.fetchone()
            if row is None or row[0] is None:
                raise UnknownOrganization(org_id)
            plan, period_start = row
            lim = self._limit(plan, quota)
            cur = await conn.execute(_EVENT, (org_id, key, quota, q, period_start, at))
            if await cur.fetchone() is None:
                raise _Repeat
            hard_limit = lim.limit if lim.hard else None
            added = None
            if hard_limit is None or q <= hard_limit:
                cur = await conn.execute(_ADD, (org_id, quota, period_start, q, hard_limit, hard_limit))
                added = await cur.fetchone()
            if added is None:  # past the hard limit: the transaction rolls back, the event with it
                cur = await conn.execute(_USED, (org_id, quota, period_start))
                used_row = await cur.fetchone()
                assert lim.limit is not None
                raise QuotaExceeded(org_id, quota, lim.limit, Decimal(used_row[0]) if used_row else Decimal(0), q)
            used = Decimal(added[0])
            if lim.limit is not None:
                for kind, percent in (("quota_80", WARNING_PERCENT), ("quota_100", EXCEEDED_PERCENT)):
                    if crossed(used - q, used, lim.limit, percent):
                        await conn.execute(_ALERT, (org_id, kind, period_start, quota, quota, at))
        usage = quota_usage(quota, used, lim.limit, lim.hard, period_start)
        return QuotaResult(org_id, quota, key, q, used, lim.limit, lim.hard, False, usage.warning)

    async def _repeat(self, conn: AsyncConnection[Any], org_id: str, quota: str, q: Decimal, key: str,
                      at: datetime) -> QuotaResult:
        cur = await conn.execute(_REPEAT, (org_id, key))
        first = await cur.fetchone()
        assert first is not None  # the insert met it, committed
        first_quota, first_quantity, period_start = first
        if first_quota != quota or Decimal(first_quantity) != q:
            raise IdempotencyConflict(org_id, key)
        cur = await conn.execute(_PERIOD, (org_id, at))
        row = await cur.fetchone()
        assert row is not None and row[0] is not None  # the wallet of a recorded event
        lim = self._limit(row[0], quota)
        cur = await conn.execute(_USED, (org_id, quota, period_start))
        used_row = await cur.fetchone()
        used = Decimal(used_row[0]) if used_row else Decimal(0)
        usage = quota_usage(quota, used, lim.limit, lim.hard, period_start)
        return QuotaResult(org_id, quota, key, Decimal(first_quantity), used, lim.limit, lim.hard, True,
                           usage.warning)

    async def usage(self, org_id: str, *, now: datetime | None = None) -> list[QuotaUsage]:
        """Every quota of the organization's plan in the catalog's order (0 when none is counted yet), then any
        other quota counted this period (no limit on this plan), by name. One statement."""
        check_id("org_id", org_id)
        rows = await self.ledger.pool.fetchall(_USAGE, (org_id, self._now(now), org_id))
        if not rows or rows[0][0] is None:
            raise UnknownOrganization(org_id)
        plan_name, period_start = rows[0][0], rows[0][1]
        used = {quota: Decimal(u) for _, _, quota, u in rows if quota is not None}
        plan = self.ledger.catalog.plans.get(plan_name)
        listed = list(plan.quotas) if plan is not None else []
        names = listed + sorted(set(used) - set(listed))
        out = []
        for name in names:
            lim = self._limit(plan_name, name)
            out.append(quota_usage(name, used.get(name, Decimal(0)), lim.limit, lim.hard, period_start))
        return out
