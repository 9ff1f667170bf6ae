"""Two reads of the ledger the API needs and ledger/gateway.py does not offer yet (they belong there: a hold's
owner, a user's limit and use). Read-only, one statement each, on the ledger's own pool; the rules they read
are ledger_check.sql's (the user's own limit, else the organization's default '*'; use counted per period)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, NamedTuple

from ledger import Ledger
from models.checks import check_id
from models.credits import from_milli


async def hold_user(ledger: Ledger, org_id: str, hold_id: str) -> tuple[str | None] | None:
    """(the user a hold was made for,), or None when there is no such hold."""
    row = await ledger.pool.fetchone("SELECT user_id FROM holds WHERE org_id = %s AND idem_key = %s",
                                     (check_id("org_id", org_id), check_id("hold_id", hold_id)))
    return None if row is None else (row[0],)


class UserLimit(NamedTuple):
    limit: Decimal | None
    source: Literal["user", "default"] | None   # None: no limit
    used: Decimal


async def user_limit(ledger: Ledger, org_id: str, user_id: str, period_start: datetime) -> UserLimit:
    """The user's limit as a debit applies it, and what the user spent in the period starting `period_start`
    (counted while the organization has any limit: what the limit is checked against)."""
    row = await ledger.pool.fetchone(
        "SELECT (SELECT limit_milli FROM user_limits WHERE org_id = %s AND user_id IN (%s, '*') "
        "        ORDER BY user_id = '*' LIMIT 1), "
        "       (SELECT user_id = '*' FROM user_limits WHERE org_id = %s AND user_id IN (%s, '*') "
        "        ORDER BY user_id = '*' LIMIT 1), "
        "       (SELECT coalesce(max(consumed), 0) FROM user_usage "
        "        WHERE org_id = %s AND user_id = %s AND period_start = %s)",
        (org_id, user_id, org_id, user_id, org_id, user_id, period_start))
    assert row is not None
    limit_milli, is_default, used_milli = row
    if limit_milli is None:
        return UserLimit(None, None, from_milli(used_milli))
    return UserLimit(from_milli(limit_milli), "default" if is_default else "user", from_milli(used_milli))
