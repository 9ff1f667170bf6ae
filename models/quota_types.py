"""Quotas: non-credit limits per plan (seed 002's sessions, events, enrichments, storage), counted per period of
the wallet by `Quotas.record` (ledger/quotas.py) and shown against their limit with the 80% warning. Pure: the
rule of a quota's name, a recorded quantity, the percentages and the alert crossings, said once here.

A quota's limit is catalog data (models/catalog.py `Plan.quotas`); a hard limit refuses a record that would pass
it (`QuotaExceeded`), a soft one counts past it. A quota the organization's plan does not list but another plan
does is counted with no limit (an enterprise plan may leave one out: unlimited).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from models.checks import shown
from models.errors import InvalidRequest

# A quota's name, as an action's: lowercase words joined by '_'. Never a ':' (an alert's period_key is
# '{period start}:{quota}').
QUOTA_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# A quantity or a limit: above 0, at most QUANTITY_PLACES decimal places (storage in GB: "0.5"), at most this.
QUANTITY_PLACES = 3
MAX_QUOTA_QUANTITY = Decimal(10**15)
WARNING_PERCENT = 80   # the usage bar turns amber, and quota_80 is emailed once a period
EXCEEDED_PERCENT = 100


def check_quota_name(value: object) -> str:
    if not isinstance(value, str) or not QUOTA_NAME.fullmatch(value):
        raise InvalidRequest(f"a quota's name is lowercase letters, digits and '_' (starting with a letter, at "
                             f"most 64 characters), got {shown(value)}")
    return value


def check_quota_amount(kind: str, value: object) -> Decimal:
    """A quantity recorded against a quota, or a quota's limit: an int, a Decimal (or, for catalog data, a decimal
    string), above 0, with at most QUANTITY_PLACES decimal places, at most MAX_QUOTA_QUANTITY. Never a float."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise InvalidRequest(f"{kind} must be an int or a Decimal, got {shown(value)}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InvalidRequest(f"{kind} is not a number: {shown(value)}") from None
    if not amount.is_finite() or not Decimal(0) < amount <= MAX_QUOTA_QUANTITY:
        raise InvalidRequest(f"{kind} must be above 0 and at most {MAX_QUOTA_QUANTITY:,}, got {shown(value)}")
    if amount != amount.quantize(Decimal(1).scaleb(-QUANTITY_PLACES)):
        raise InvalidRequest(f"{kind} has at most {QUANTITY_PLACES} decimal places, got {shown(value)}")
    return amount


def percent_of(used: Decimal, limit: Decimal) -> int:
    """Whole percent used, rounded down (a bar at 79.99% is not yet amber); past 100 for a soft limit."""
    return int(used * 100 // limit)


def crossed(before: Decimal, after: Decimal, limit: Decimal, percent: int) -> bool:
    """`after` reaches `percent` of `limit` and `before` did not: the moment an alert is due."""
    return before * 100 < limit * percent <= after * 100


@dataclass(frozen=True)
class QuotaUsage:
    quota: str
    used: Decimal               # counted this period
    limit: Decimal | None       # the plan's limit; None: the plan lists none (unlimited), counted all the same
    hard: bool                  # past the limit is refused (False: counted past it)
    percent: int | None         # whole percent of the limit used (None: no limit); may pass 100 when soft
    warning: bool               # at or past 80% of the limit
    exceeded: bool              # at or past the limit
    period_start: datetime      # the wallet's period (the month, or the free plan's UTC day)


def quota_usage(quota: str, used: Decimal, limit: Decimal | None, hard: bool, period_start: datetime) -> QuotaUsage:
    if limit is None:
        return QuotaUsage(quota, used, None, False, None, False, False, period_start)
    return QuotaUsage(quota, used, limit, hard, percent_of(used, limit),
                      used * 100 >= limit * WARNING_PERCENT, used >= limit, period_start)


@dataclass(frozen=True)
class QuotaResult:
    org_id: str
    quota: str
    idempotency_key: str
    quantity: Decimal           # recorded (a replay: the first call's)
    used: Decimal               # the quota's use in the record's period, this one included (a replay: as now)
    limit: Decimal | None
    hard: bool
    replayed: bool              # the key was recorded before: nothing written now
    warning: bool               # at or past 80% of the limit after this record
