"""Credits are exact decimals with 3 places, stored as integer milli-credits. Never floats."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from models.checks import shown
from models.errors import InvalidRequest

MILLI = 1000
# The one bound on any amount of credits (a cost, a grant, a limit, a threshold): a trillion credits, far
# above any wallet and far below what a bigint of milli-credits holds (9.2e15 credits).
MAX_CREDITS_MILLI = 10**15


def to_milli(credits: Decimal | int | str) -> int:
    """Exact conversion; refuses floats, values finer than a milli-credit and amounts over the bound."""
    if isinstance(credits, float | bool):
        raise InvalidRequest(f"credits must be Decimal, int or str, not {type(credits).__name__}")
    try:
        value = Decimal(credits)
    except (InvalidOperation, ValueError) as exc:
        raise InvalidRequest(f"not a number of credits: {shown(credits)}") from exc
    if not value.is_finite():
        raise InvalidRequest(f"not a finite number of credits: {shown(credits)}")
    if abs(value) > Decimal(MAX_CREDITS_MILLI) / MILLI:
        raise InvalidRequest(
            f"{shown(credits)} credits is more than any wallet can hold (at most {MAX_CREDITS_MILLI // MILLI:,})")
    milli = value * MILLI
    if milli != milli.to_integral_value():
        raise InvalidRequest(f"credits have at most 3 decimal places: {shown(credits)}")
    return int(milli)


def round_milli(value: Decimal) -> int:
    """Milli-credits from an exact product, rounded half-up (only reached for fractional quantities)."""
    return int((value * MILLI).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_milli(milli: int) -> Decimal:
    return Decimal(milli).scaleb(-3)  # exact: always 3 decimal places
