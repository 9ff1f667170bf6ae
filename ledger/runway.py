"""The runway alert (DESIGN.md section 11): an organization opts in (wallets.runway_alert); once a period, when the
period's projected use runs past its allocation before the 80% alert would fire (models/projection.py's rule,
`runway_alert_due`, applied here and never restated), an alert `runway` is recorded. Its email is sent by the alert
poller (mail/alerts.py, which calls `record_runway_alerts` at most once a minute) and its webhook event
`credits.runway` written by trigger in the same transaction as the alert (0012).

The alert row: period_key the period's start in epoch seconds, detail the projected use in milli-credits; the
unique (org_id, kind, period_key) makes it once a period however many pollers run.
"""

from __future__ import annotations

from datetime import datetime

from ledger.pool import LeanPool
from models.checks import check_id, check_time, shown
from models.credits import to_milli
from models.errors import InvalidRequest, UnknownOrganization
from models.projection import project

# The opted-in wallets with an ending period and no runway alert for it yet, with the figures of the projection as
# the ledger reads them now (the partial index wallets_runway finds the opted-in ones).
_DUE = """
SELECT w.org_id, b.allocation, b.consumed, b.period_start, b.period_end
FROM wallets w CROSS JOIN LATERAL ledger_balance(w.org_id, %s) b
WHERE w.runway_alert AND b.period_end IS NOT NULL AND b.allocation > 0
  AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.org_id = w.org_id AND a.kind = 'runway'
                  AND a.period_key = extract(epoch FROM b.period_start)::bigint::text)
ORDER BY w.org_id
"""
# period_key written as ledger_alerts writes a plan alert's (the mail poller compares them).
_ALERT = ("INSERT INTO alerts (org_id, kind, period_key, detail, created_at) "
          "VALUES (%s, 'runway', extract(epoch FROM %s::timestamptz)::bigint::text, %s, %s) "
          "ON CONFLICT DO NOTHING RETURNING id")


async def set_runway_alert(pool: LeanPool, org_id: str, enabled: bool) -> None:
    """Opt the organization in (or out). Unknown organization: UnknownOrganization; nothing else changes."""
    check_id("org_id", org_id)
    if not isinstance(enabled, bool):
        raise InvalidRequest(f"enabled must be true or false, got {shown(enabled)}")
    row = await pool.fetchone("UPDATE wallets SET runway_alert = %s WHERE org_id = %s RETURNING 1",
                              (enabled, org_id))
    if row is None:
        raise UnknownOrganization(org_id)


async def runway_alert(pool: LeanPool, org_id: str) -> bool:
    check_id("org_id", org_id)
    row = await pool.fetchone("SELECT runway_alert FROM wallets WHERE org_id = %s", (org_id,))
    if row is None:
        raise UnknownOrganization(org_id)
    return bool(row[0])


async def record_runway_alerts(pool: LeanPool, now: datetime) -> int:
    """Record the runway alerts due at `now`; returns how many were recorded (a racing poller's are not)."""
    check_time("now", now)
    recorded = 0
    for org_id, allocation, consumed, start, end in await pool.fetchall(_DUE, (now,)):
        p = project(allocation_milli=allocation, consumed_milli=consumed, period_start=start, period_end=end,
                    as_of=now)
        if not p.runway_alert_due:
            continue
        if await pool.fetchone(_ALERT, (org_id, start, str(to_milli(p.projected)), now)) is not None:
            recorded += 1
    return recorded
