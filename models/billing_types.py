"""Typed inputs and results of the billing activities (Stripe, invoices, emails) and of the public
subscription API: plain dataclasses, stdlib only, so workflows import them and Temporal carries them
(with the pydantic data converter: Decimal and aware datetimes round-trip exactly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Literal

Status = Literal["trialing", "active", "past_due", "free"]
Interval = Literal["month", "year"]
Purpose = Literal["subscription", "renewal", "retry", "upgrade", "seats", "pack", "auto_recharge"]
CardKind = Literal["ok", "declined", "requires_authentication", "none"]


@dataclass(frozen=True)
class InvoiceLine:
    description: str       # "pro x 3 seats, 2026-01-15 to 2026-02-15"
    quantity: int
    unit_cents: int
    amount_cents: int      # quantity x unit, or the prorated amount


@dataclass(frozen=True)
class EnsureCustomer:
    """Create (once) the organization's billing profile and Stripe customer; attach `payment_method`
    as its default when given."""
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)

    org_id: str
    email: str
    now: datetime
    payment_method: str | None = None
    vat_rate: Decimal = Decimal(0)
    currency: str = "EUR"


@dataclass(frozen=True)
class CustomerResult:
    org_id: str
    customer_id: str
    payment_method: str | None   # the default payment method, None when there is none


@dataclass(frozen=True)
class ChargeRequest:
    """Charge the organization's default payment method off-session, once per `key`, and issue the
    invoice. `key` ({org}:{period_start}:{purpose}) is the payments row's key and the Idempotency-Key."""

    org_id: str
    key: str
    purpose: Purpose
    lines: list[InvoiceLine]
    now: datetime              # business time: the invoice date
    vat_rate: Decimal = Decimal(0)
    currency: str = "EUR"
    summary: str = ""          # "Charge EUR 270.00: pro x 3 seats" (also the PaymentIntent description)


@dataclass(frozen=True)
class ChargeResult:
    org_id: str
    key: str
    amount_cents: int          # total charged, tax included
    currency: str
    payment_intent: str
    invoice_number: str
    replayed: bool             # True when the key had already been charged: nothing was charged again


@dataclass(frozen=True)
class IssueInvoice:
    """Issue, once per `charge.key`, an open invoice of `charge`'s lines payable by `due_at` (invoice payment
    terms): no card is charged; its payment row waits as 'invoiced' until the invoice is paid."""

    charge: ChargeRequest
    due_at: datetime


InvoiceStep = Literal["check", "due", "overdue"]


@dataclass(frozen=True)
class InvoiceState:
    """An invoice as its subscription follows it."""

    org_id: str
    key: str                   # its payment's key
    number: str
    status: Literal["open", "paid"]
    due_at: datetime | None
    paid_at: datetime | None = None


@dataclass(frozen=True)
class MarkInvoice:
    """Read an invoice (`check`), or record that its due date came unpaid (`due`) or that dunning began
    (`overdue`), each once."""

    org_id: str
    key: str
    step: InvoiceStep
    now: datetime


@dataclass(frozen=True)
class SendEmail:
    """Render `template` (templates/emails/{template}.*) with `context` and send it once per `key`."""
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)

    org_id: str
    key: str
    template: str
    to: str
    now: datetime
    context: dict[str, str | int | bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EmailResult:
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)
    key: str
    sent: bool                 # False when the key had already been sent (nothing sent again)
    failed: str | None = None  # the SMTP server refused it for good: its answer, recorded on the outbox row


@dataclass(frozen=True)
class Invoice:
    number: str
    org_id: str
    purpose: str
    issued_at: datetime
    currency: str
    lines: list[InvoiceLine]
    subtotal_cents: int
    tax_rate: Decimal
    tax_cents: int
    total_cents: int
    stripe_payment_id: str     # "" for an invoice paid by transfer (or not yet paid)
    html: str
    status: Literal["open", "paid"] = "paid"   # open: issued on invoice terms, payable by due_at
    due_at: datetime | None = None
    paid_at: datetime | None = None
    overdue_at: datetime | None = None         # when dunning began (unpaid a day past due_at)


@dataclass(frozen=True)
class Charge:
    """A payment as the test kit and operators see it."""

    key: str
    org_id: str
    amount_cents: int
    currency: str
    purpose: str
    status: Literal["pending", "succeeded", "declined", "invoiced"]   # invoiced: an open invoice awaits it
    payment_intent: str | None
    created_at: datetime
