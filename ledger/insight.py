"""Usage insight: the per-event log, per-action summaries, series, lifetime totals, exports, the projection and a
member's own usage (DESIGN.md section 11, docs/usage.md). Reads only.

Every read is one statement through the ledger's pool, on the usage_events_log index (org_id, created_at,
idem_key): the log walks it backwards from a keyset position, the range reads and the usage export scan one
organization's slice of it. The transactions export walks ledger_entries' primary key (org_id, id). An export is
the one long read: it streams from a server-side cursor on a connection of its own (a reader may take minutes to
download a million rows; the pool's connections serve the debits meanwhile), a chunk of rows at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from json.encoder import encode_basestring
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.rows import tuple_row

from ledger.gateway import Ledger
from ledger.pool import CONNECT_TIMEOUT_SECONDS
from models.checks import check_id, check_name, check_time, shown
from models.credits import from_milli, to_milli
from models.errors import InvalidRequest, ServiceUnavailable, UnknownOrganization
from models.insight_types import (
    DEFAULT_LOG_LIMIT,
    MAX_LOG_LIMIT,
    MAX_SERIES_BUCKETS,
    TRANSACTION_COLUMNS,
    USAGE_COLUMNS,
    ActionSummary,
    ExportFormat,
    ExportWhat,
    LifetimeTotals,
    MemberUsage,
    SeriesBucket,
    SeriesBy,
    SeriesPoint,
    UsageEvent,
    UsagePage,
)
from models.projection import Projection, project
from models.tags import tag_filter

# Rows an export fetches from its server-side cursor at a time: its memory is one chunk's rows and their text,
# whatever the range holds (bench/export.py measures it). Formatting a chunk is CPU on the event loop (7-11 us a
# row): 500 rows keep each stretch under ~5 ms, so the debits an API process serves meanwhile are not held up.
EXPORT_CHUNK_ROWS = 500
EXPORT_APPLICATION_NAME = "billing-export"  # pg_stat_activity names an export's connection
# Exports one process streams at once, each on a connection and a transaction of its own for as long as its reader
# downloads: past this, another export is refused (ServiceUnavailable, 503: retry) rather than let readers take
# PostgreSQL's connections (max_connections 100 by default) from the debits. A million rows stream in ~10 s.
MAX_EXPORTS = 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)
_STEPS: dict[str, timedelta] = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
_SERIES_KEYS = {None: "NULL::text", "action": "action", "user": "user_id"}
_USAGE_FIELDS = "created_at, idem_key, source, action, tier, quantity, country, user_id, cost, tags"


def _range(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """[since, until): either end open when None. until before since is refused."""
    lo = check_time("since", since) if since is not None else _EPOCH
    hi = check_time("until", until) if until is not None else _END_OF_TIME
    if hi < lo:
        raise InvalidRequest(f"until ({hi.isoformat()}) is before since ({lo.isoformat()})")
    return lo, hi


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC)


def _rfc3339(at: datetime) -> str:
    """UTC, 'Z', microseconds when there are any (a usage time is exact to the microsecond)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_cursor(at: datetime, key: str) -> str:
    """The log's opaque cursor: the keyset position (created_at, idem_key) of a page's last event."""
    return base64.urlsafe_b64encode(f"{_utc(at).isoformat()}|{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: object) -> tuple[datetime, str]:
    """A cursor back to its position; anything a log did not hand out is InvalidRequest."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 400:
        raise InvalidRequest(f"not a usage log cursor: {shown(cursor)}")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, key = text.split("|", 1)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive")
        check_id("cursor key", key)
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidRequest):
        raise InvalidRequest(f"not a usage log cursor (pass next_cursor as given): {shown(cursor)}") from None
    return at, key


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOG_LIMIT:
        raise InvalidRequest(f"limit is a whole number of events from 1 to {MAX_LOG_LIMIT}, got {shown(limit)}")
    return limit


def _per_use(cost_milli: int, uses: int) -> Decimal:
    """Credits per use to the milli-credit, rounded half-up once."""
    if not uses:
        return from_milli(0)
    return from_milli(int((Decimal(cost_milli) / uses).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _floor(at: datetime, bucket: str) -> datetime:
    at = _utc(at).replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if bucket == "day" else at


def _summaries(rows: Sequence[tuple[Any, ...]]) -> list[ActionSummary]:
    return [ActionSummary(action, uses, Decimal(qty), from_milli(cost), _per_use(cost, uses))
            for action, uses, qty, cost in rows]


class UsageInsight:
    """The reads of usage (reads only): ledger.pool for the statements, ledger.clock for 'now'."""

    def __init__(self, ledger: Ledger, *, max_exports: int = MAX_EXPORTS) -> None:
        self.ledger = ledger
        self.pool = ledger.pool
        self.max_exports = max_exports
        self._exports = asyncio.Semaphore(max_exports)

    def _now(self, now: datetime | None) -> datetime:
        return check_time("now", now) if now is not None else self.ledger.clock()

    async def _require_org(self, org_id: str) -> None:
        if await self.pool.fetchone("SELECT 1 FROM wallets WHERE org_id = %s", (org_id,)) is None:
            raise UnknownOrganization(org_id)

    # -- the log -----------------------------------------------------------------------------------

    async def log(
        self, org_id: str, *, action: str | None = None, tier: str | None = None, user_id: str | None = None,
        tags: Mapping[str, str] | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LOG_LIMIT, cursor: str | None = None,
    ) -> UsagePage:
        """One page of an organization's usage events, newest first, [since, until), every filter given
        matching (tags: each given tag has the given value). next_cursor continues after this page's last
        event (keyset on (created_at, idem_key): events written meanwhile never shift a page)."""
        check_id("org_id", org_id)
        n = _limit(limit)
        lo, hi = _range(since, until)
        where = ["org_id = %s", "created_at >= %s", "created_at < %s"]
        params: list[Any] = [org_id, lo, hi]
        for column, value in (("action", action), ("tier", tier)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(check_name(column, value))
        if user_id is not None:
            where.append("user_id = %s")
            params.append(check_id("user_id", user_id))
        wanted = tag_filter(tags)
        if wanted:
            where.append("tags @> %s::jsonb")
            params.append(json.dumps(wanted))
        if cursor is not None:
            where.append("(created_at, idem_key) < (%s, %s)")
            params.extend(decode_cursor(cursor))
        rows = await self.pool.fetchall(
            f"SELECT {_USAGE_FIELDS} FROM usage_events WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, idem_key DESC LIMIT %s", (*params, n + 1))
        if not rows:
            await self._require_org(org_id)
        events = [UsageEvent(_utc(at), key, source, act, t, Decimal(qty), country, user, from_milli(cost),
                             dict(sorted((tg or {}).items())))
                  for at, key, source, act, t, qty, country, user, cost, tg in rows[:n]]
        more = len(rows) > n
        return UsagePage(events, encode_cursor(events[-1].at, events[-1].idempotency_key) if more else None)

    # -- grouped reads -----------------------------------------------------------------------------

    async def summary(
        self, org_id: str, *, since: datetime | None = None, until: datetime | None = None,
        user_id: str | None = None,
    ) -> list[ActionSummary]:
        """Per action over [since, until): uses, quantity, credits, credits per use; most credits first."""
        check_id("org_id", org_id)
        lo, hi = _range(since, until)
        if user_id is not None:
            check_id("user_id", user_id)
        rows = await self.pool.fetchall(
            "SELECT action, count(*), sum(quantity), sum(cost) FROM usage_events "
            "WHERE org_id = %s AND created_at >= %s AND created_at < %s AND (%s::text IS NULL OR user_id = %s) "
            "GROUP BY action ORDER BY sum(cost) DESC, action", (org_id, lo, hi, user_id, user_id))
        if not rows:
            await self._require_org(org_id)
        return _summaries(rows)

    async def series(
        self, org_id: str, *, since: datetime, until: datetime, bucket: SeriesBucket = "day",
        by: SeriesBy | None = None, user_id: str | None = None,
    ) -> list[SeriesPoint]:
        """Uses and credits per UTC day (or hour) from the bucket holding `since` to the one before `until`,
        events in [since, until). Dense: every bucket for every key seen in the range (by=None: the one series,
        all its buckets even with no use). Ordered by bucket, then key (None last)."""
        check_id("org_id", org_id)
        step = _STEPS.get(check_name("bucket", bucket))
        if step is None:
            raise InvalidRequest(f"a series' bucket is 'day' or 'hour', not {shown(bucket)}")
        if by is not None and (not isinstance(by, str) or by not in _SERIES_KEYS):
            raise InvalidRequest(f"a series is grouped by 'action', 'user' or nothing, not {shown(by)}")
        if since is None or until is None:
            raise InvalidRequest("a series needs since and until")
        lo, hi = _range(since, until)
        if user_id is not None:
            check_id("user_id", user_id)
        first = _floor(lo, bucket)
        count = -((first - hi) // step)  # ceil((hi - first) / step): the buckets starting before until
        if count > MAX_SERIES_BUCKETS:
            raise InvalidRequest(f"a series has at most {MAX_SERIES_BUCKETS} buckets; {since.isoformat()} to "
                                 f"{until.isoformat()} by {bucket} is {count:,}")
        starts = [first + i * step for i in range(count)] if hi > lo else []
        rows = await self.pool.fetchall(
            f"SELECT date_trunc(%s, created_at, 'UTC'), {_SERIES_KEYS[by]}, count(*), sum(cost) FROM usage_events "
            "WHERE org_id = %s AND created_at >= %s AND created_at < %s AND (%s::text IS NULL OR user_id = %s) "
            "GROUP BY 1, 2", (bucket, org_id, lo, hi, user_id, user_id))
        if not rows:
            await self._require_org(org_id)
        seen: dict[tuple[datetime, str | None], tuple[int, int]] = {
            (_utc(b), key): (uses, cost) for b, key, uses, cost in rows}
        keys = sorted({key for _, key in seen}, key=lambda k: (k is None, k or "")) if by else [None]
        return [SeriesPoint(s, k, seen.get((s, k), (0, 0))[0], from_milli(seen.get((s, k), (0, 0))[1]))
                for s in starts for k in keys]

    async def lifetime(self, org_id: str) -> LifetimeTotals:
        """Since the wallet opened: credits added (every grant entry: plan periods and daily credits by their
        bucket's kind 'plan', packs and any-amount purchases 'pack'), used (every usage event's cost: debits and
        committed holds, overage included) and expired (plan credits closed unused: 'expire' entries)."""
        check_id("org_id", org_id)
        row = await self.pool.fetchone(
            "SELECT w.created_at, g.plan, g.packs, g.expired, u.used FROM wallets w "
            "CROSS JOIN LATERAL ("
            "  SELECT coalesce(sum(e.amount) FILTER (WHERE e.kind = 'grant' AND b.kind = 'plan'), 0), "
            "         coalesce(sum(e.amount) FILTER (WHERE e.kind = 'grant' AND b.kind = 'pack'), 0), "
            "         coalesce(-sum(e.amount) FILTER (WHERE e.kind = 'expire'), 0) "
            "  FROM ledger_entries e JOIN buckets b ON b.id = e.bucket_id "
            "  WHERE e.org_id = w.org_id AND e.kind IN ('grant', 'expire')) g (plan, packs, expired) "
            "CROSS JOIN LATERAL (SELECT coalesce(sum(cost), 0) FROM usage_events WHERE org_id = w.org_id) u (used) "
            "WHERE w.org_id = %s", (org_id,))
        if row is None:
            raise UnknownOrganization(org_id)
        created, plan, packs, expired, used = row
        return LifetimeTotals(org_id, _utc(created), from_milli(plan + packs), from_milli(plan), from_milli(packs),
                              from_milli(used), from_milli(expired))

    # -- exports -----------------------------------------------------------------------------------

    async def export(
        self, org_id: str, *, what: ExportWhat, fmt: ExportFormat, since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """An organization's usage events or ledger entries over [since, until), oldest first, as CSV (a header
        row; tags a JSON string column) or JSON lines. Everything is checked here, the organization too; the
        iterator returned streams the rows from a server-side cursor, EXPORT_CHUNK_ROWS at a time (an async
        generator: aclose() when the reader goes away closes its connection at once)."""
        check_id("org_id", org_id)
        if what not in ("usage", "transactions"):
            raise InvalidRequest(f"an export is of 'usage' or 'transactions', not {shown(what)}")
        if fmt not in ("csv", "jsonl"):
            raise InvalidRequest(f"an export's format is 'csv' or 'jsonl', not {shown(fmt)}")
        lo, hi = _range(since, until)
        await self._require_org(org_id)
        sql, shape, encode, header = export_format(what, fmt)
        self._check_slot()  # refused here in the common case; the slot itself is taken when the stream starts
        return self._stream(sql, (org_id, lo, hi), shape, encode, header)

    def _check_slot(self) -> None:
        if self._exports.locked():
            raise ServiceUnavailable(f"{self.max_exports} exports are running in this process: try again when one ends")

    async def _stream(
        self, sql: str, params: tuple[Any, ...], shape: Callable[[tuple[Any, ...]], list[Any]],
        encode: Callable[[list[list[Any]]], bytes], header: bytes,
    ) -> AsyncGenerator[bytes, None]:
        """The rows of `sql`, a chunk at a time, on a connection of the export's own (closed however the
        reader stops: the end, an error, or aclose when it goes away). Its export slot is taken when it starts
        (a stream never started holds none) and given back when it ends."""
        self._check_slot()
        await self._exports.acquire()  # free: taken without waiting
        try:
            conn = await AsyncConnection.connect(self.pool.url, row_factory=tuple_row,
                                                 connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                                 application_name=EXPORT_APPLICATION_NAME)
        except OperationalError as exc:
            self._exports.release()
            raise ServiceUnavailable(f"the export could not reach the database ({exc})") from exc
        except BaseException:
            self._exports.release()
            raise
        try:
            async with conn.transaction(), conn.cursor(name="export") as cur:
                await cur.execute(sql, params)
                if header:
                    yield header
                while rows := await cur.fetchmany(EXPORT_CHUNK_ROWS):
                    yield encode([shape(r) for r in rows])
        except OperationalError as exc:
            if not (conn.closed or conn.broken):
                raise
            raise ServiceUnavailable(f"the database connection was lost during the export ({exc}); what was "
                                     "sent is incomplete: export the range again") from exc
        finally:
            self._exports.release()
            await conn.close()

    # -- this period -------------------------------------------------------------------------------

    async def projection(self, org_id: str, *, now: datetime | None = None) -> Projection | None:
        """The period's use at its burn rate so far (models/projection.py); None when the period has no end."""
        at = self._now(now)
        bal = await self.ledger.balance(org_id, now=at)
        if bal.period_end is None:
            return None
        return project(allocation_milli=to_milli(bal.allocation), consumed_milli=to_milli(bal.consumed_this_period),
                       period_start=bal.period_start, period_end=bal.period_end, as_of=at)

    async def member_usage(self, org_id: str, user_id: str, *, now: datetime | None = None) -> MemberUsage:
        """A member's use this period (their usage events' cost, by action), their limit (their own, else the
        organization's default) and what remains of it: the limit less the use the ledger checks it against."""
        check_id("user_id", user_id)
        at = self._now(now)
        bal = await self.ledger.balance(org_id, now=at)
        end = bal.period_end if bal.period_end is not None else _END_OF_TIME
        rows = await self.pool.fetchall(
            "SELECT action, count(*), sum(quantity), sum(cost) FROM usage_events "
            "WHERE org_id = %s AND created_at >= %s AND created_at < %s AND user_id = %s "
            "GROUP BY action ORDER BY sum(cost) DESC, action", (org_id, bal.period_start, end, user_id))
        by_action = _summaries(rows)
        used = sum((a.credits for a in by_action), from_milli(0))
        lim = await self.ledger.user_limit(org_id, user_id, bal.period_start)
        remaining = None if lim.limit is None else max(lim.limit - lim.used, from_milli(0))
        return MemberUsage(org_id, user_id, bal.period_start, bal.period_end, used, lim.limit, lim.source,
                           remaining, by_action)


# -- the export's rows as text --------------------------------------------------------------------------

# The exports' statements: (org_id, since, until); oldest first, on usage_events_log / ledger_entries' key.
EXPORT_SQL: dict[str, str] = {
    "usage": ("SELECT created_at, idem_key, source, action, tier, quantity::text, country, user_id, cost, "
              "coalesce(tags, '{}'::jsonb)::text FROM usage_events "
              "WHERE org_id = %s AND created_at >= %s AND created_at < %s ORDER BY created_at, idem_key"),
    "transactions": ("SELECT e.id, e.created_at, e.kind, e.amount, b.grant_key, e.ref FROM ledger_entries e "
                     "LEFT JOIN buckets b ON b.id = e.bucket_id "
                     "WHERE e.org_id = %s AND e.created_at >= %s AND e.created_at < %s ORDER BY e.id"),
}


def _milli_text(milli: int) -> str:
    """str(from_milli(milli)) without a Decimal a row: '-1.350', '0.005'."""
    whole, frac = divmod(abs(milli), 1000)
    return f"{'-' if milli < 0 else ''}{whole}.{frac:03}"


def _usage_values(r: tuple[Any, ...]) -> list[Any]:
    at, key, source, action, tier, qty, country, user, cost, tags = r
    return [_rfc3339(at), key, source, action, tier, qty, country, user, _milli_text(cost), tags]


def _transaction_values(r: tuple[Any, ...]) -> list[Any]:
    entry_id, at, kind, amount, bucket, ref = r
    return [entry_id, _rfc3339(at), kind, _milli_text(amount), bucket, ref]


def export_format(what: ExportWhat, fmt: ExportFormat) -> tuple[
        str, Callable[[tuple[Any, ...]], list[Any]], Callable[[list[list[Any]]], bytes], bytes]:
    """An export's statement, a row's values as text, a chunk's encoding and the header (CSV's, else b"")."""
    columns = USAGE_COLUMNS if what == "usage" else TRANSACTION_COLUMNS
    shape = _usage_values if what == "usage" else _transaction_values
    encode = _csv_chunk if fmt == "csv" else _jsonl_chunk(columns, what == "usage")
    return EXPORT_SQL[what], shape, encode, _csv_chunk([list(columns)]) if fmt == "csv" else b""


def _csv_chunk(rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)  # None is written as the empty field
    return buf.getvalue().encode()


def _jsonl_chunk(columns: Sequence[str], tags_last: bool) -> Callable[[list[list[Any]]], bytes]:
    """JSON lines: one object a row, the columns as keys in order. Written by hand, not json.dumps a row (a
    third of the export's time): every value is a string (encoded by json's own C routine), None (null), an int
    (an entry's id) or, last in a usage row, the tags (already JSON text from the database)."""
    keys = [("{" if i == 0 else ",") + encode_basestring(name) + ":" for i, name in enumerate(columns)]
    raw_last = len(keys) - 1 if tags_last else -1

    def value(v: Any) -> str:
        if v is None:
            return "null"
        return str(v) if isinstance(v, int) else encode_basestring(v)

    def encode(rows: list[list[Any]]) -> bytes:
        return "".join(
            "".join(k + (v if i == raw_last else value(v)) for i, (k, v) in enumerate(zip(keys, row, strict=True)))
            + "}\n" for row in rows).encode()

    return encode
