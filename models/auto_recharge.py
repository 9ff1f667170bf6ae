"""Auto-recharge and pack rules: pure functions with their own tests (tests/rules/test_auto_recharge_rules.py).

The spending window is the organization's current billing period, or the calendar month (UTC) for a
free organization. A round buys the fewest packs that bring the balance back above the threshold, as
many of those as the window's limit allows (tax included); none when even one pack would exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from models.billing_types import InvoiceLine
from models.catalog import Catalog, Pack
from models.checks import shown
from models.credits import to_milli
from models.errors import InvalidRequest
from models.invoicing import totals
from models.periods import add_months

MAX_THRESHOLD = Decimal(10**9)  # a billion credits: far above any balance, far below bigint milli
# How long a trigger holds off the next one (ledger/sql/ledger_recharge_lease.sql says the same in
# ledger_recharge_lease): a round that takes longer, or a lost signal, is asked again.
LEASE = timedelta(minutes=15)


def spending_window(
    on_free_plan: bool, period_start: datetime, period_end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) of the period whose auto-recharge spending the limit caps."""
    if not on_free_plan and period_end is not None and period_start <= now < period_end:
        return period_start, period_end
    month = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return month, add_months(month, 1)


def packs_needed(available: Decimal, threshold: Decimal, pack_credits: Decimal) -> int:
    """The fewest packs that lift `available` above `threshold` (0 when it is not under it)."""
    if pack_credits <= 0:
        raise ValueError(f"a pack holds credits, got {pack_credits}")
    if available >= threshold:
        return 0
    return int((threshold - available) // pack_credits) + 1


def pack_lines(name: str, pack: Pack, count: int) -> list[InvoiceLine]:
    return [InvoiceLine(f"Credit pack {name} ({pack.credits} credits, never expire)", count, pack.price_cents,
                        pack.price_cents * count)]


@dataclass(frozen=True)
class Decision:
    action: Literal["buy", "not_needed", "limit_reached", "off"]
    packs: int = 0
    total_cents: int = 0


def decide(
    *, enabled: bool, available: Decimal, threshold: Decimal, pack_name: str, pack: Pack,
    spending_limit_cents: int, spent_cents: int, vat_rate: Decimal,
) -> Decision:
    """What one auto-recharge round does."""
    if not enabled:
        return Decision("off")
    needed = packs_needed(available, threshold, pack.credits)
    if needed == 0:
        return Decision("not_needed")
    for count in range(needed, 0, -1):
        total = totals(pack_lines(pack_name, pack, count), vat_rate).total_cents
        if spent_cents + total <= spending_limit_cents:
            return Decision("buy", count, total)
    return Decision("limit_reached")


def check_settings(
    catalog: Catalog, *, threshold: Decimal, pack: str, spending_limit_cents: int, enabled: bool
) -> Decimal:
    """Refuse unusable settings with a clear message; returns the threshold as exact credits."""
    if not isinstance(enabled, bool):
        raise InvalidRequest(f"enabled must be true or false, got {shown(enabled)}")
    if isinstance(threshold, float | bool) or not isinstance(threshold, Decimal | int):
        raise InvalidRequest(f"threshold must be a Decimal number of credits, got {shown(threshold)}")
    to_milli(threshold)  # finite, at most 3 decimal places
    value = Decimal(threshold)
    if value < 0:
        raise InvalidRequest(f"the auto-recharge threshold cannot be negative, got {shown(threshold)}")
    if value > MAX_THRESHOLD:
        raise InvalidRequest(f"the auto-recharge threshold is at most {MAX_THRESHOLD} credits, got {shown(threshold)}")
    chosen = catalog.pack(pack) if isinstance(pack, str) else None
    if chosen is None:
        raise InvalidRequest(f"pack must be a pack name, one of {', '.join(catalog.packs)}; got {shown(pack)}")
    if isinstance(spending_limit_cents, bool) or not isinstance(spending_limit_cents, int):
        raise InvalidRequest(
            f"spending_limit_cents must be an integer number of cents, got {shown(spending_limit_cents)}")
    if spending_limit_cents < chosen.price_cents:
        raise InvalidRequest(
            f"a spending limit of {shown(spending_limit_cents)} cents cannot buy even one {pack} pack "
            f"({chosen.price_cents} cents): raise the limit or choose a smaller pack")
    if spending_limit_cents > 10**11:
        raise InvalidRequest(f"spending_limit_cents is at most 100000000000, got {shown(spending_limit_cents)}")
    return value
