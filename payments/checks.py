"""The checks of a payment request, before anything is written or sent to Stripe. They raise
InvalidRequest (models/errors.py); ids and times follow models/checks.py, the rule of every entry point."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from models.billing_types import ChargeRequest, InvoiceLine
from models.checks import check_id, check_key, check_rate, check_time
from models.errors import InvalidRequest
from models.invoicing import Totals, charge_summary, totals
from models.money import Money
from payments.invoices import line_json

_CURRENCY = re.compile(r"[A-Z]{3}")


def check_currency(currency: str) -> str:
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise InvalidRequest(f"currency must be an ISO 4217 code in capitals (EUR), got {currency!r}")
    return currency


def check_payment_method(payment_method: str | None) -> str | None:
    if payment_method is not None and (not isinstance(payment_method, str) or not payment_method.strip()):
        raise InvalidRequest(f"payment_method must be a Stripe PaymentMethod id, got {payment_method!r}")
    return payment_method


def check_lines(lines: list[InvoiceLine]) -> None:
    if not isinstance(lines, list) or not lines:
        raise InvalidRequest("a charge needs at least one invoice line")
    for line in lines:
        if not isinstance(line, InvoiceLine):
            raise InvalidRequest(f"not an invoice line: {line!r}")
        for name in ("quantity", "unit_cents", "amount_cents"):
            value = getattr(line, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequest(f"{name} of {line.description!r} must be an integer, got {value!r}")
        if not line.description.strip():
            raise InvalidRequest("an invoice line needs a description")
        if line.amount_cents < 0 or line.quantity < 0:
            raise InvalidRequest(f"invoice line {line.description!r} is negative")


def fraction_text(rate: Decimal) -> str:
    """A canonical text for a rate: 0.2 and 0.20 are the same request."""
    return format(rate.normalize(), "f") if rate else "0"


def request_json(req: ChargeRequest) -> dict[str, Any]:
    """What makes two charges with one key the same request (a repeat) or not (a conflict)."""
    return {"org_id": req.org_id, "purpose": req.purpose, "currency": req.currency,
            "vat_rate": fraction_text(req.vat_rate), "lines": [line_json(line) for line in req.lines]}


def checked_charge(req: ChargeRequest) -> tuple[Totals, dict[str, Any], str]:
    """A charge's (or an open invoice's) totals, the record that makes a repeat the same request, and its
    description, once every check passed: nothing is written before."""
    check_id("org_id", req.org_id)
    check_key("key", req.key)
    check_time("now", req.now)
    check_rate("vat_rate", req.vat_rate)
    currency = check_currency(req.currency)
    check_lines(req.lines)
    t = totals(req.lines, req.vat_rate)
    if t.total_cents <= 0:
        raise InvalidRequest(
            f"{req.org_id}: nothing to charge for {req.key!r} (total {Money(t.total_cents, currency)})")
    return t, request_json(req), req.summary or charge_summary(req.lines, req.vat_rate, currency)
