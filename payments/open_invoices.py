"""Open invoices: the invoice payment terms of a contract (docs/contracts.md). A renewal on `invoice` terms issues
an invoice payable by a due date instead of charging a card; it is paid when an operator records the transfer
(`mark_paid`, from the CLI or the API), or when the organization pays it by card (`pay_invoice`: the charge path
of payments/charges.py under the invoice's payment key, so a crash after Stripe charged is found again and paid
once). Exactly once per business key, as charges are: the payment row and the invoice are written in one
transaction under the key's advisory lock; a repeat answers as the first did.

Why the engine's own record and not Stripe Invoices with collection_method=send_invoice: localstripe 1.15
refuses Invoice.create's collection_method and days_until_due (400 "Unexpected ..."), so that path could not
run in any test here; the record is the same shape a send_invoice integration would reconcile against.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from models.billing_types import ChargeRequest, ChargeResult, InvoiceLine, InvoiceState, IssueInvoice, MarkInvoice
from models.checks import check_id, check_key, check_time
from models.errors import IdempotencyConflict, InvalidRequest, UnknownInvoice
from models.keys import invoice_payment_key
from payments.base import LOCK_PAYMENT
from payments.charges import Charges
from payments.checks import checked_charge
from payments.invoices import insert_invoice

log = logging.getLogger(__name__)

_STATE = ("SELECT org_id, payment_key, number, status, due_at, paid_at FROM invoices ")
MAX_REFERENCE = 200


class OpenInvoices(Charges):
    async def issue_invoice(self, req: IssueInvoice) -> ChargeResult:
        """The open invoice of `req.charge`, issued once per key (a repeat returns it, `replayed`)."""
        t, request, description = checked_charge(req.charge)
        charge = req.charge
        due_at = check_time("due_at", req.due_at)
        if due_at < charge.now:
            raise InvalidRequest(f"{charge.org_id}: an invoice cannot be due ({due_at}) before it is issued")
        async with self._locked(LOCK_PAYMENT, charge.key) as conn:
            cur = await conn.execute(
                "SELECT p.request, p.status, i.number FROM payments p LEFT JOIN invoices i ON i.payment_key = p.key "
                "WHERE p.key = %s", (charge.key,))
            row = await cur.fetchone()
            if row is not None:
                stored, status, number = row
                if stored != request or number is None or status not in ("invoiced", "succeeded"):
                    raise IdempotencyConflict(charge.org_id, charge.key)
                return ChargeResult(charge.org_id, charge.key, t.total_cents, charge.currency, "", number, True)
            cur = await conn.execute("SELECT email FROM billing_profiles WHERE org_id = %s", (charge.org_id,))
            email = (await cur.fetchone() or (None,))[0]
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO payments (key, org_id, purpose, amount_cents, currency, description, request, "
                    "status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, 'invoiced', %s, %s)",
                    (charge.key, charge.org_id, charge.purpose, t.total_cents, charge.currency, description,
                     json.dumps(request), charge.now, charge.now))
                number = await insert_invoice(conn, charge, t, None, email, due_at=due_at)  # last: the counter lock
        log.info("invoice %s of %s issued open, due %s", number, charge.org_id, due_at)
        return ChargeResult(charge.org_id, charge.key, t.total_cents, charge.currency, "", number, False)

    async def invoice_state(self, org_id: str, key: str) -> InvoiceState:
        """The invoice of payment `key` as it stands (UnknownInvoice when there is none)."""
        pool = await self._ready()
        row = await pool.fetchone(_STATE + "WHERE org_id = %s AND payment_key = %s", (org_id, key))
        if row is None:
            raise UnknownInvoice(org_id, key)
        return InvoiceState(*row)

    async def mark_invoice(self, req: MarkInvoice) -> InvoiceState:
        """Record that an open invoice's due date came unpaid (`due`) or that its dunning began (`overdue`): once
        (a repeat keeps the first time); each is an event (invoice.due, invoice.overdue). A paid invoice is left."""
        check_key("key", req.key)
        now = check_time("now", req.now)
        if req.step == "check":
            return await self.invoice_state(req.org_id, req.key)
        column = {"due": "due_noticed_at", "overdue": "overdue_at"}.get(req.step)
        if column is None:
            raise InvalidRequest(f"an invoice step is 'check', 'due' or 'overdue', got {req.step!r}")
        pool = await self._ready()
        await pool.fetchall(f"UPDATE invoices SET {column} = %s WHERE org_id = %s AND payment_key = %s "
                            f"AND status = 'open' AND {column} IS NULL RETURNING number", (now, req.org_id, req.key))
        return await self.invoice_state(req.org_id, req.key)

    async def pay_invoice(self, org_id: str, number: str, *, idempotency_key: str, now: datetime) -> InvoiceState:
        """The organization pays open invoice `number` with its card: one attempt per `idempotency_key`, charged
        off-session under `invoice_payment_key` (Stripe's Idempotency-Key and the PaymentIntent's metadata, so an
        attempt that crashed after Stripe charged is found again), then the invoice and its payment paid by that
        PaymentIntent in one transaction. Paid already: answered as it stands, nothing charged. A decline is
        PaymentDeclined and leaves the invoice open (its dunning goes on); another key may try another card."""
        check_id("org_id", org_id)
        check_id("idempotency_key", idempotency_key)
        check_time("now", now)
        state = await self._open_invoice(org_id, number)
        if state.status == "paid":
            return state
        pool = await self._ready()
        row = await pool.fetchone(
            "SELECT purpose, lines, tax_rate, currency FROM invoices WHERE org_id = %s AND number = %s",
            (org_id, number))
        assert row is not None
        purpose, lines, tax_rate, currency = row
        req = ChargeRequest(org_id, invoice_payment_key(state.key, idempotency_key), purpose,
                            [InvoiceLine(**line) for line in lines], now, tax_rate, currency, f"Invoice {number}")
        t, _, _ = checked_charge(req)
        # The invoice's payment key's lock: one attempt at a time, and never beside an operator's mark_paid.
        async with self._locked(LOCK_PAYMENT, state.key) as conn:
            cur = await conn.execute("SELECT status FROM payments WHERE key = %s", (state.key,))
            if (await cur.fetchone() or ("",))[0] != "invoiced":  # paid meanwhile
                return await self.invoice_state(org_id, state.key)
            cur = await conn.execute(
                "SELECT stripe_customer_id, payment_method_id FROM billing_profiles WHERE org_id = %s", (org_id,))
            customer, pm = await cur.fetchone() or (None, None)
            pi, _ = await self._succeeded_intent(conn, req, t, False, customer, pm)
            await self._record_invoice_paid(conn, req, state.key, pi.id)
        log.info("invoice %s of %s paid by card: %s", number, org_id, pi.id)
        return await self.invoice_state(org_id, state.key)

    async def _record_invoice_paid(self, conn: AsyncConnection[Any], req: ChargeRequest, payment_key: str,
                                   pi: str) -> None:
        """One transaction: the open invoice and its payment paid by PaymentIntent `pi`. Stripe has confirmed `pi`
        and nothing is written yet (the test kit injects its crash here, as for a charge)."""
        async with conn.transaction():
            await conn.execute(
                "UPDATE invoices SET status = 'paid', paid_at = %s, stripe_payment_id = %s "
                "WHERE payment_key = %s AND status = 'open'", (req.now, pi, payment_key))
            await conn.execute(
                "UPDATE payments SET status = 'succeeded', paid_by = 'card', stripe_payment_intent = %s, "
                "updated_at = %s WHERE key = %s AND status = 'invoiced'", (pi, req.now, payment_key))

    async def _open_invoice(self, org_id: str, number: str) -> InvoiceState:
        if not isinstance(number, str) or not number.strip() or len(number) > 40:
            raise InvalidRequest(f"an invoice number is INV-YYYY-NNNNNN, got {number!r}")
        pool = await self._ready()
        row = await pool.fetchone(_STATE + "WHERE org_id = %s AND number = %s", (org_id, number))
        if row is None:
            raise UnknownInvoice(org_id, number)
        return InvoiceState(*row)

    async def mark_paid(self, org_id: str, number: str, *, now: datetime, reference: str | None = None) -> InvoiceState:
        """An operator records the payment of open invoice `number` (a bank transfer): the invoice paid and its
        payment succeeded, in one statement; an invoice already paid answers as it stands (a repeat).
        UnknownInvoice for a number the organization does not have."""
        check_id("org_id", org_id)
        check_time("now", now)
        if reference is not None and (not isinstance(reference, str) or len(reference) > MAX_REFERENCE):
            raise InvalidRequest(f"a payment reference is at most {MAX_REFERENCE} characters of text")
        state = await self._open_invoice(org_id, number)  # UnknownInvoice before anything is written
        # Under the payment key's lock: a card payment of the same invoice (pay_invoice) is never half-way.
        async with self._locked(LOCK_PAYMENT, state.key) as conn:
            await conn.execute(  # one statement: the invoice paid and its payment succeeded, or neither
                "WITH paid AS (UPDATE invoices SET status = 'paid', paid_at = %s, paid_reference = %s "
                "              WHERE org_id = %s AND number = %s AND status = 'open' RETURNING payment_key) "
                "UPDATE payments SET status = 'succeeded', paid_by = 'transfer', updated_at = %s "
                "WHERE key IN (SELECT payment_key FROM paid) AND status = 'invoiced'",
                (now, reference, org_id, number, now))
        return await self.invoice_state(org_id, state.key)
