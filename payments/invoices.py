"""Invoices: their rendering, their gapless numbering inside a charge's success transaction, and the
reads of invoices and payments."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from psycopg import AsyncConnection

from models.billing_types import Charge, ChargeRequest, Invoice, InvoiceLine
from models.invoicing import Totals, invoice_number
from models.money import Money
from payments.base import PaymentsBase
from settings import ROOT

_TEMPLATES = Environment(
    loader=FileSystemLoader(ROOT / "templates"),
    autoescape=select_autoescape(["html", "xml"]),
    undefined=StrictUndefined,
)
_INVOICE_TEMPLATE = _TEMPLATES.get_template("invoice.html")  # loaded at import, never on the event loop


def percent_text(rate: Decimal) -> str:
    return format((rate * 100).normalize(), "f") if rate else "0"


def line_json(line: InvoiceLine) -> dict[str, Any]:
    return {"description": line.description, "quantity": line.quantity, "unit_cents": line.unit_cents,
            "amount_cents": line.amount_cents}


def render_invoice(*, number: str, issued_at: datetime, org_id: str, email: str | None, currency: str,
                   lines: list[InvoiceLine], t: Totals, stripe_payment_id: str, due_at: datetime | None = None) -> str:
    def money(cents: int) -> str:
        return str(Money(cents, currency))

    return _INVOICE_TEMPLATE.render(
        number=number, date=issued_at.astimezone(UTC).date().isoformat(), org_id=org_id, email=email,
        lines=[{"description": line.description, "quantity": line.quantity, "unit": money(line.unit_cents),
                "amount": money(line.amount_cents)} for line in lines],
        subtotal=money(t.subtotal_cents), tax_rate=percent_text(t.tax_rate), tax=money(t.tax_cents),
        total=money(t.total_cents), stripe_payment_id=stripe_payment_id,
        due=None if due_at is None else due_at.astimezone(UTC).date().isoformat(),
    )


async def insert_invoice(conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, pi: str | None,
                         email: str | None, *, due_at: datetime | None = None) -> str:
    """Take the year's next invoice number and insert the invoice of the charge `req` paid by PaymentIntent
    `pi` (or, with `due_at`, an open invoice payable by then); returns the number. Call it inside the transaction
    that marks the payment succeeded (or invoiced), as its last statements: the year's counter row stays locked
    until the commit, and a rolled-back number was never seen, so the numbers are gapless."""
    issued = req.now
    year = issued.astimezone(UTC).year
    cur = await conn.execute(
        "INSERT INTO invoice_counters AS c (year, last) VALUES (%s, 1) "
        "ON CONFLICT (year) DO UPDATE SET last = c.last + 1 RETURNING last", (year,))
    row = await cur.fetchone()
    assert row is not None
    seq = int(row[0])
    number = invoice_number(year, seq)
    html = render_invoice(number=number, issued_at=issued, org_id=req.org_id, email=email,
                          currency=req.currency, lines=req.lines, t=t, stripe_payment_id=pi or "", due_at=due_at)
    await conn.execute(
        "INSERT INTO invoices (number, year, seq, org_id, payment_key, purpose, issued_at, currency, lines, "
        "subtotal_cents, tax_rate, tax_cents, total_cents, stripe_payment_id, html, status, due_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s)",
        (number, year, seq, req.org_id, req.key, req.purpose, issued, req.currency,
         json.dumps([line_json(line) for line in req.lines]), t.subtotal_cents, t.tax_rate,
         t.tax_cents, t.total_cents, pi, html, "paid" if due_at is None else "open", due_at))
    return number


class InvoiceReads(PaymentsBase):
    """The reads of payments and invoices (the client, operators, the test kit)."""

    async def charges(self, org_id: str) -> list[Charge]:
        """The organization's payments, oldest first."""
        pool = await self._ready()
        rows = await pool.fetchall(
            "SELECT key, org_id, amount_cents, currency, purpose, status, stripe_payment_intent, created_at "
            "FROM payments WHERE org_id = %s ORDER BY created_at, key", (org_id,))
        return [Charge(*row) for row in rows]

    async def invoices(self, org_id: str, *, number: str | None = None) -> list[Invoice]:
        """The organization's invoices, oldest first (only invoice `number`, if given)."""
        pool = await self._ready()
        rows = await pool.fetchall(
            "SELECT number, org_id, purpose, issued_at, currency, lines, subtotal_cents, tax_rate, tax_cents, "
            "total_cents, coalesce(stripe_payment_id, ''), html, status, due_at, paid_at, overdue_at FROM invoices "
            "WHERE org_id = %s AND (%s::text IS NULL OR number = %s) ORDER BY issued_at, year, seq",
            (org_id, number, number))
        return [
            Invoice(number, org, purpose, issued_at, currency, [InvoiceLine(**line) for line in lines],
                    subtotal, rate, tax, total, spi, html, status, due_at, paid_at, overdue_at)
            for (number, org, purpose, issued_at, currency, lines, subtotal, rate, tax, total, spi, html, status,
                 due_at, paid_at, overdue_at) in rows
        ]
