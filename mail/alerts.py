"""Email the alerts the ledger records (table `alerts`: 80% and 100% of the plan credits, low balance,
usage guard paused, 80% and 100% of a quota, the runway), once each.

The debit path only inserts a row (it must stay one round trip); this poller turns unsent rows into
emails through Mailer.send with the key `alert:{id}`, so a crash or a second poller never sends twice,
then stamps alerts.sent_at. Alerts of organizations without a billing profile (no recipient) wait.
Each poll also relays the outbox emails a workflow stopped waiting for (Mailer.relay: SMTP was down).

The runway alert has no debit to record it (it is about the rate of use, not one crossing): before sending, the
poller records the runway alerts due (ledger/runway.py `record_runway_alerts`) at most once a minute of its clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from temporalio.exceptions import ApplicationError

from ledger.pool import LeanPool
from ledger.runway import record_runway_alerts
from mail.mailer import Mailer
from models.billing_types import SendEmail
from models.catalog import CATALOG, Catalog
from models.checks import utcnow
from models.contract_types import number_text
from models.credits import from_milli
from models.keys import alert_key
from models.projection import RUNWAY_BEFORE_PERCENT
from models.quota_types import EXCEEDED_PERCENT, WARNING_PERCENT, percent_of
from telemetry import count

log = logging.getLogger(__name__)

TEMPLATES = {
    "plan_80": "usage_80",
    "plan_100": "credits_exhausted",
    "low_balance": "low_balance",
    "usage_guard_paused": "usage_guard_paused",
    "quota_80": "quota_80",
    "quota_100": "quota_100",
    "runway": "runway",
}
# The poller records the runway alerts due at most this often (its clock).
RUNWAY_EVERY = timedelta(minutes=1)

# ledger_balance gives the current period as of `now` (a free plan's day rolls over without a write);
# period_key of a plan or runway alert is that period's start in epoch seconds (ledger_alerts, ledger/runway.py),
# of a quota alert '{that}:{quota}' (ledger/quotas.py), whose use this period quota_usage holds.
_PENDING = """
SELECT a.id, a.org_id, a.kind, a.period_key, a.detail, p.email,
       b.allocation, b.consumed, extract(epoch FROM b.period_start)::bigint::text,
       w.low_balance_threshold, g.max_uses, g.window_seconds,
       b.plan, b.period_end, w.runway_alert, q.used
FROM alerts a
JOIN billing_profiles p ON p.org_id = a.org_id
LEFT JOIN wallets w ON w.org_id = a.org_id
LEFT JOIN LATERAL ledger_balance(a.org_id, %s) b ON true
LEFT JOIN usage_guards g ON a.kind = 'usage_guard_paused' AND g.org_id = a.org_id AND g.action = a.detail
LEFT JOIN quota_usage q ON a.kind IN ('quota_80', 'quota_100') AND q.org_id = a.org_id AND q.quota = a.detail
                       AND q.period_start = b.period_start
WHERE a.sent_at IS NULL AND a.id <> ALL (%s::bigint[])
ORDER BY a.id
LIMIT %s
"""
_STAMP = "UPDATE alerts SET sent_at = %s WHERE id = %s AND sent_at IS NULL"


@dataclass(frozen=True)
class _Pending:
    id: int
    org_id: str
    kind: str
    period_key: str
    detail: str
    email: str
    allocation: int | None
    consumed: int | None
    current_period: str | None
    threshold: int | None
    guard_max_uses: int | None
    guard_window_seconds: int | None
    plan: str | None
    period_end: datetime | None
    runway_opted: bool | None
    quota_used: Decimal | None


def format_credits(milli: int) -> str:
    """2400000 -> '2,400'; 500 -> '0.5': exact, no trailing zeros."""
    return number_text(from_milli(milli))


def format_window(seconds: int) -> str:
    """3600 -> 'hour', 1800 -> '30 minutes': reads after 'per'."""
    n, unit = seconds, "second"
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n, unit = seconds // size, name
            break
    return unit if n == 1 else f"{n} {unit}s"


def alert_context(a: _Pending, catalog: Catalog = CATALOG) -> dict[str, str | int | bool | None] | None:
    """The template's context, or None when the alert is no longer worth an email and is retired unsent:
    a plan alert of a period that has ended, an 80% alert overtaken by 100% (its own email says more),
    a low-balance alert the organization has since switched off; a quota alert of an ended period, of a quota
    the plan no longer limits, or no longer true of the use against the plan's limit (an 80% one overtaken by
    100%); a runway alert of an ended period, opted out since, past 80% now (that alert says more) or whose
    projection no longer passes the allocation."""
    if a.kind in ("quota_80", "quota_100"):
        return _quota_context(a, catalog)
    if a.kind == "runway":
        return _runway_context(a)
    if a.kind in ("plan_80", "plan_100"):
        if a.allocation is None or a.consumed is None or a.current_period != a.period_key or a.allocation <= 0:
            return None
        if a.kind == "plan_80" and a.consumed >= a.allocation:
            return None
        if a.kind == "plan_100":
            return {"allocation": format_credits(a.allocation)}
        return {"allocation": format_credits(a.allocation), "consumed": format_credits(a.consumed),
                "percent": a.consumed * 100 // a.allocation}
    if a.kind == "low_balance":
        if a.threshold is None:
            return None
        return {"available": format_credits(max(int(a.detail), 0)), "threshold": format_credits(a.threshold)}
    if a.kind == "usage_guard_paused":
        if a.guard_max_uses is None or a.guard_window_seconds is None:
            detail = "its usage guard was tripped"  # the guard was removed since
        else:
            uses = "1 use" if a.guard_max_uses == 1 else f"{a.guard_max_uses} uses"
            detail = f"it went past its limit of {uses} per {format_window(a.guard_window_seconds)}"
        return {"action": a.detail, "detail": detail}
    raise ValueError(f"alert {a.id}: unknown kind {a.kind!r}")


def _quota_context(a: _Pending, catalog: Catalog) -> dict[str, str | int | bool | None] | None:
    period, _, quota = a.period_key.partition(":")
    plan = catalog.plans.get(a.plan or "")
    limit = None if plan is None else plan.quotas.get(quota)
    if a.current_period != period or limit is None:
        return None
    used = a.quota_used if a.quota_used is not None else Decimal(0)
    if a.kind == "quota_80" and not (WARNING_PERCENT * limit.limit <= used * 100 < EXCEEDED_PERCENT * limit.limit):
        return None
    if a.kind == "quota_100" and used < limit.limit:
        return None
    return {"quota": quota, "used": number_text(used), "limit": number_text(limit.limit),
            "percent": percent_of(used, limit.limit), "hard": limit.hard, "plan": a.plan}


def _runway_context(a: _Pending) -> dict[str, str | int | bool | None] | None:
    if (a.allocation is None or a.consumed is None or a.period_end is None or not a.runway_opted
            or a.current_period != a.period_key or a.allocation <= 0):
        return None
    projected = int(a.detail)
    if a.consumed * 100 >= a.allocation * RUNWAY_BEFORE_PERCENT or projected <= a.allocation:
        return None
    return {"projected": format_credits(projected), "allocation": format_credits(a.allocation),
            "consumed": format_credits(a.consumed), "percent": a.consumed * 100 // a.allocation,
            "period_end": a.period_end.date().isoformat()}


class AlertSender:
    def __init__(self, pool: LeanPool, mailer: Mailer, catalog: Catalog = CATALOG) -> None:
        self.pool = pool
        self.mailer = mailer
        self.catalog = catalog  # the current catalog: the quotas' limits (as the Ledger's)
        self._runway_at: datetime | None = None  # when this poller last recorded the runway alerts due
        # Alerts whose email is a bad request (say, a malformed address in the profile): left unsent,
        # and passed over by this process so they cannot hold up the others behind them.
        self._refused: set[int] = set()

    async def send_pending(self, now: datetime, limit: int = 100) -> int:
        """Record the runway alerts due (at most once a minute), email up to `limit` unsent alerts, then relay
        the outbox's stranded emails (Mailer.relay); returns how many emails went out now."""
        await self.record_runway(now)
        sent = (await self._batch(now, limit))[1]
        return sent + await self.mailer.relay(now, limit=limit)

    async def _batch(self, now: datetime, limit: int) -> tuple[int, int]:
        """(alerts handled, emails sent). A bad request is logged and passed over; anything else (SMTP
        or database down) stops the batch and propagates."""
        rows = await self.pool.fetchall(_PENDING, (now, sorted(self._refused), limit))
        handled = sent = 0
        for row in rows:
            alert = _Pending(*row)
            context = alert_context(alert, self.catalog)
            if context is not None:
                try:
                    result = await self.mailer.send(SendEmail(
                        org_id=alert.org_id, key=alert_key(alert.id), template=TEMPLATES[alert.kind],
                        to=alert.email, now=now, context=context))
                except ApplicationError as exc:
                    if not exc.non_retryable:
                        raise
                    log.error("alert %s (%s, %s) not emailed: %s", alert.id, alert.kind, alert.org_id, exc)
                    self._refused.add(alert.id)
                    handled += 1
                    continue
                sent += result.sent
                if result.failed:
                    count("billing_notifications_failed", template=TEMPLATES[alert.kind])
                    log.error("alert %s (%s, %s) not emailed: %s", alert.id, alert.kind, alert.org_id,
                              result.failed)
            else:
                log.info("alert %s (%s, %s) is no longer true: retired without an email",
                         alert.id, alert.kind, alert.org_id)
            await self._stamp(alert.id, now)
            handled += 1
        return handled, sent

    async def record_runway(self, now: datetime) -> int:
        """Record the runway alerts due at `now` unless this poller did less than RUNWAY_EVERY ago (of its clock;
        a clock set back records again). Returns how many were recorded."""
        if self._runway_at is not None and self._runway_at <= now < self._runway_at + RUNWAY_EVERY:
            return 0
        self._runway_at = now  # a failure waits for the next minute too: no retry storm against a sick database
        recorded = await record_runway_alerts(self.pool, now)
        if recorded:
            log.info("runway alerts recorded: %d", recorded)
        return recorded

    async def _stamp(self, alert_id: int, now: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_STAMP, (now, alert_id))

    async def run(
        self, stop: asyncio.Event, interval: float = 1.0, clock: Callable[[], datetime] = utcnow,
        limit: int = 100,
    ) -> None:
        """Poll until `stop` is set. Errors are logged and the next poll tries again; a full batch polls
        again at once."""
        while not stop.is_set():
            handled = 0
            now = clock()
            try:
                await self.record_runway(now)
            except Exception:  # the emails of the alerts already recorded go out all the same
                log.exception("runway alerts: recording failed, retrying in %s", RUNWAY_EVERY)
            try:
                handled, sent = await self._batch(now, limit)
                if sent:
                    log.info("alert emails sent: %d", sent)
                relayed = await self.mailer.relay(now, limit=limit)
                if relayed:
                    log.info("outbox emails relayed: %d", relayed)
            except Exception:
                log.exception("alert emails: poll failed, retrying in %.1fs", interval)
            if handled < limit:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)

