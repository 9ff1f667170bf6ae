"""Auto-recharge and pack rules: pure functions with their own tests (tests/rules/test_auto_recharge_rules.py).

The spending window is the organization's current billing period, or the calendar month (UTC) for a
free organization. A round buys the fewest packs that bring the balance back above the threshold, as
many of those as the window's limit allows (tax included); none when even one pack would exceed it.
An amount of credits (seed 004) is bought the way a pack is: as a `Pack` of that many credits at the
catalog's per-credit price (Catalog.credit_amount), so the same rules decide how many of it to buy.
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
from models.errors import BillingError, InvalidRequest
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


def per_credit(price_cents: Decimal, currency: str) -> str:
    """A per-credit price as an invoice shows it: 'EUR 0.20', 'EUR 0.004' (cents may have a fraction)."""
    whole, _, fraction = format((price_cents / 100).normalize(), "f").partition(".")
    return f"{currency} {whole}.{fraction.ljust(2, '0')}"


def credit_lines(amount: Pack, count: int, price_cents: Decimal, currency: str) -> list[InvoiceLine]:
    """The invoice line of `count` x an amount of credits (Catalog.credit_amount) bought at `price_cents` each."""
    return [InvoiceLine(f"Credits: {amount.credits} at {per_credit(price_cents, currency)} each (never expire)",
                        count, amount.price_cents, amount.price_cents * count)]


def recharge_unit(catalog: Catalog, pack: str, credits: Decimal | None) -> Pack | None:
    """What one auto-recharge unit is on `catalog`: the named pack, or the amount of credits at the catalog's
    price; None when the catalog no longer sells it (auto-recharge then does nothing)."""
    if credits is None:
        return catalog.packs.get(pack)
    try:
        return catalog.credit_amount(credits)
    except BillingError:
        return None


def recharge_lines(catalog: Catalog, pack: str, credits: Decimal | None, unit: Pack, count: int,
                   currency: str) -> list[InvoiceLine]:
    if credits is None:
        return pack_lines(pack, unit, count)
    return credit_lines(unit, count, catalog.credits.price_cents, currency)


def encode_buys(pack: str | None, credits: Decimal | None) -> str:
    """What auto-recharge buys as the `auto_recharge.pack` column holds it (migration 0008): a pack's name,
    or 'credits:' and the amount as a plain decimal ('credits:250', 'credits:100.5')."""
    if credits is None:
        assert pack is not None
        return pack
    return f"credits:{format(credits.normalize(), 'f')}"


def decode_buys(column: str) -> tuple[str | None, Decimal | None]:
    """(pack, credits) from the `auto_recharge.pack` column (encode_buys)."""
    if column.startswith("credits:"):
        return None, Decimal(column.removeprefix("credits:"))
    return column, None


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
    catalog: Catalog, *, threshold: Decimal, pack: str | None, spending_limit_cents: int, enabled: bool,
    credits: Decimal | None = None,
) -> Decimal:
    """Refuse unusable settings with a clear message; returns the threshold as exact credits. Exactly one
    of `pack` and `credits` (an amount at the catalog's per-credit price, at least its minimum)."""
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
    if (pack is None) == (credits is None):
        raise InvalidRequest("auto-recharge buys a pack or an amount of credits: pass exactly one of pack and "
                             f"credits (got pack={shown(pack)}, credits={shown(credits)})")
    chosen: Pack | None
    if credits is not None:
        chosen = catalog.credit_amount(credits)
        pack = f"{chosen.credits} credits"  # as the messages below name it
    else:
        chosen = catalog.pack(pack) if isinstance(pack, str) else None
    if chosen is None:
        raise InvalidRequest(f"pack must be a pack name, one of {', '.join(catalog.packs)}; got {shown(pack)}")
    if isinstance(spending_limit_cents, bool) or not isinstance(spending_limit_cents, int):
        raise InvalidRequest(
            f"spending_limit_cents must be an integer number of cents, got {shown(spending_limit_cents)}")
    if spending_limit_cents < chosen.price_cents:
        raise InvalidRequest(
            f"a spending limit of {shown(spending_limit_cents)} cents cannot buy even one "
            f"{pack if credits is not None else f'{pack} pack'} ({chosen.price_cents} cents): raise the limit or "
            f"choose a smaller {'amount' if credits is not None else 'pack'}")
    if spending_limit_cents > 10**11:
        raise InvalidRequest(f"spending_limit_cents is at most 100000000000, got {shown(spending_limit_cents)}")
    return value
