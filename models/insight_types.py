"""What the usage insight reads answer (ledger/insight.py, DESIGN.md section 11, docs/usage.md). Pure data.

Credits are Decimal (milli-credit exact), times are aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

UsageSource = Literal["debit", "hold"]
SeriesBucket = Literal["day", "hour"]
SeriesBy = Literal["action", "user"]
ExportWhat = Literal["usage", "transactions"]
ExportFormat = Literal["csv", "jsonl"]
LimitSource = Literal["user", "default"]

# The bounds of a read: a page of the log, the points of one series' key.
MAX_LOG_LIMIT = 1000
DEFAULT_LOG_LIMIT = 50
MAX_SERIES_BUCKETS = 1000

# The export's columns, in order (CSV header, JSON lines keys).
USAGE_COLUMNS = ("at", "idempotency_key", "source", "action", "tier", "quantity", "country", "user_id",
                 "credits", "tags")
TRANSACTION_COLUMNS = ("id", "at", "kind", "credits", "bucket", "ref")


@dataclass(frozen=True)
class UsageEvent:
    """One metered use: a debit, or a committed hold (its key is 'hold:' + the hold's key)."""

    at: datetime
    idempotency_key: str
    source: UsageSource
    action: str
    tier: str | None
    quantity: Decimal
    country: str | None
    user_id: str | None
    credits: Decimal
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UsagePage:
    events: list[UsageEvent]
    next_cursor: str | None   # None: this is the last page


@dataclass(frozen=True)
class ActionSummary:
    action: str
    uses: int
    quantity: Decimal
    credits: Decimal
    credits_per_use: Decimal  # credits / uses, to the milli-credit (half-up)


@dataclass(frozen=True)
class SeriesPoint:
    start: datetime           # the bucket's start (UTC day or hour)
    key: str | None           # the action or user (None: not grouped, or a use without a user)
    uses: int
    credits: Decimal


@dataclass(frozen=True)
class LifetimeTotals:
    org_id: str
    since: datetime           # the wallet's creation
    added: Decimal            # every grant: added_plan + added_packs
    added_plan: Decimal       # the plans' period allocations and the free plan's daily credits
    added_packs: Decimal      # packs and any-amount purchases
    used: Decimal             # the cost of every usage event (debits and committed holds, overage included)
    expired: Decimal          # plan credits left unused at a period's end


@dataclass(frozen=True)
class MemberUsage:
    org_id: str
    user_id: str
    period_start: datetime
    period_end: datetime | None
    used: Decimal             # the user's usage events' cost this period
    limit: Decimal | None
    limit_source: LimitSource | None
    remaining: Decimal | None  # max(limit - used, 0); None without a limit
    by_action: list[ActionSummary] = field(default_factory=list)
