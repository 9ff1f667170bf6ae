"""Stripe customers and charges, and the invoices of successful charges, exactly once per business key
(payments/charges.py argues how).

`Payments` is the one class the rest of the code uses; each concern is a part of it in its own module,
all on one `PaymentsBase` (the pool, the Stripe client, the per-key advisory lock). Its methods raise
BillingErrors (models/errors.py); the activities (activities/payments.py) turn them into ApplicationErrors.
"""

from __future__ import annotations

from payments.charges import Charges
from payments.customers import Customers
from payments.invoices import InvoiceReads
from payments.open_invoices import OpenInvoices
from payments.stripe_client import close_stripe_client, stripe_client, stripe_client_from_settings


class Payments(Customers, OpenInvoices, Charges, InvoiceReads):
    """Stripe customers, charges and invoices on PostgreSQL: `Payments(db, stripe_client, pool_size=4)`,
    `db` a LeanPool (shared) or a database URL (a pool of its own, closed by `close`)."""


__all__ = ["Payments", "close_stripe_client", "stripe_client", "stripe_client_from_settings"]
