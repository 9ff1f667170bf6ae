"""Money is integer cents with a currency. Rounding to the cent is half-up, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal


@dataclass(frozen=True, slots=True)
class Money:
    cents: int
    currency: str = "EUR"

    def __post_init__(self) -> None:
        if not isinstance(self.cents, int) or isinstance(self.cents, bool):
            raise TypeError(f"money is integer cents, got {self.cents!r}")

    def __str__(self) -> str:
        sign = "-" if self.cents < 0 else ""
        whole, part = divmod(abs(self.cents), 100)
        return f"{self.currency} {sign}{whole:,}.{part:02d}"


def round_cents(amount: Decimal) -> int:
    """Half-up to the cent, from an exact Decimal amount of cents."""
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
