"""Invoice arithmetic and numbering: pure functions, shared by the workflows (for summaries) and the
charge activity (for the invoice itself)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from models.billing_types import InvoiceLine
from models.money import Money, round_cents


@dataclass(frozen=True)
class Totals:
    subtotal_cents: int
    tax_rate: Decimal
    tax_cents: int
    total_cents: int


def totals(lines: list[InvoiceLine], vat_rate: Decimal) -> Totals:
    """Subtotal of the lines, tax at the organization's VAT rate (half-up to the cent), total."""
    if not Decimal(0) <= vat_rate < 1:
        raise ValueError(f"a VAT rate is a fraction in [0, 1), got {vat_rate}")
    subtotal = sum(line.amount_cents for line in lines)
    tax = round_cents(Decimal(subtotal) * vat_rate)
    return Totals(subtotal, vat_rate, tax, subtotal + tax)


def invoice_number(year: int, seq: int) -> str:
    """INV-YYYY-NNNNNN: gapless per year (the charge activity takes seq from a per-year counter). At least
    six digits: the millionth invoice of a year is INV-YYYY-1000000, never a refusal after Stripe charged."""
    if seq < 1:
        raise ValueError(f"invoice sequence out of range: {seq}")
    return f"INV-{year:04d}-{seq:06d}"


def charge_summary(lines: list[InvoiceLine], vat_rate: Decimal, currency: str = "EUR") -> str:
    """What an operator reads on the activity: "Charge EUR 270.00: pro x 3 seats"."""
    what = "; ".join(line.description for line in lines)
    return f"Charge {Money(totals(lines, vat_rate).total_cents, currency)}: {what}"
