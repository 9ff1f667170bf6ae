"""Stripe charges, and the invoices of successful charges, exactly once per business key.

Exactly once (docs/architecture.md), with a Stripe that may ignore Idempotency-Key (localstripe does):

* Every charge is serialised per key by a session advisory lock (held across the Stripe call, on one
  pooled connection), and its `payments` row is committed (status pending) BEFORE Stripe is called.
  Whoever calls Stripe for a key holds the lock and has seen its row, so a call that inserts the row
  itself knows no PaymentIntent exists for the key yet. Duplicates running at once wait, then replay.
* A call that finds the row pending (an earlier attempt crashed, or timed out, after reaching Stripe)
  looks for the PaymentIntent tagged `metadata.billing_key == key` before creating one: it lists the
  customer's charges (`customer=`, 100 a page, `expand=data.payment_intent`; newest first on real
  Stripe, so the first page nearly always has it) and keeps the PaymentIntents carrying the key. A
  confirmed PaymentIntent always has a charge, succeeded or failed, so every attempt that moved (or
  tried to move) money is found. Only a PaymentIntent stopped at `requires_action` has no charge; it
  moved no money, is never charged off-session, and the retry creates (and cancels) another.
* The PaymentIntent is also created with Idempotency-Key = key, which real Stripe honours for 24 hours.
* Success is one transaction: the payment marked succeeded, the year's invoice counter incremented and
  the invoice inserted, so invoice numbers are gapless (a rolled-back number was never seen).

Errors (models/errors.py; the activity turns each into a non-retryable ApplicationError of its class
name, activities/errors.py): a decline (card error, authentication required off-session) is a
`PaymentDeclined` carrying the decline code, recorded on the payment row: the same key again raises it
again. No payment method is the same error with code "no_payment_method", but nothing was attempted, so
nothing is recorded: the key can be charged later. Bad input is an `InvalidRequest`, a key reused for
other content an `IdempotencyConflict`. What is not a business answer stays an ApplicationError:
`PaymentProviderRefused` when Stripe refuses the request itself (a refused create deletes its pending
row: nothing was charged); PaymentStateUnexpected (non-retryable), PaymentProcessing (retried); the rest of Stripe's
errors are classified once, in payments/stripe_errors.py (429 after its Retry-After; network errors and
5xx retried by Temporal: the Stripe client is built with max_network_retries=0).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import stripe
from psycopg import AsyncConnection
from stripe.params import ChargeListParams
from temporalio.exceptions import ApplicationError

from models.billing_types import ChargeRequest, ChargeResult
from models.errors import IdempotencyConflict, PaymentDeclined
from models.invoicing import Totals
from models.money import Money
from payments.base import LOCK_PAYMENT, PaymentsBase
from payments.checks import checked_charge
from payments.invoices import insert_invoice
from payments.stripe_client import decline_code_of, metadata_value, stripe_idempotency_key
from payments.stripe_errors import stripe_failure

log = logging.getLogger(__name__)

# Of several PaymentIntents carrying one key, the one furthest towards moving money is the answer.
_PI_PREFERENCE = {"succeeded": 0, "processing": 1, "requires_capture": 2}


class Charges(PaymentsBase):
    async def charge(self, req: ChargeRequest) -> ChargeResult:
        t, request, description = checked_charge(req)
        now, currency = req.now, req.currency
        async with self._locked(LOCK_PAYMENT, req.key) as conn:
            prior = await self._existing(conn, req, request)
            if isinstance(prior, ChargeResult):
                return prior
            fresh = not prior
            cur = await conn.execute(
                "SELECT email, stripe_customer_id, payment_method_id FROM billing_profiles WHERE org_id = %s",
                (req.org_id,))
            email, customer, pm = await cur.fetchone() or (None, None, None)
            if fresh:
                if customer is None or pm is None:  # nothing to attempt: no payment row either
                    raise self._no_payment_method(req, t)
                await conn.execute(
                    "INSERT INTO payments (key, org_id, purpose, amount_cents, currency, description, request, "
                    "status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, 'pending', %s, %s)",
                    (req.key, req.org_id, req.purpose, t.total_cents, currency, description, json.dumps(request),
                     now, now))
            return await self._charge_pending(conn, req, t, fresh, email, customer, pm)

    def _no_payment_method(self, req: ChargeRequest, t: Totals) -> PaymentDeclined:
        log.info("payment %s of %s: no payment method", req.key, req.org_id)
        return PaymentDeclined(f"{req.org_id}: no payment method to charge {Money(t.total_cents, req.currency)} to",
                               "no_payment_method")

    async def _existing(self, conn: AsyncConnection[Any], req: ChargeRequest,
                        request: dict[str, Any]) -> ChargeResult | bool:
        """A repeat's answer: the first result (succeeded), the decline again (declined), a conflict (other
        content); else whether the key has a (pending) payment row."""
        cur = await conn.execute(
            "SELECT p.request, p.status, p.stripe_payment_intent, p.decline_code, p.amount_cents, p.currency, "
            "i.number FROM payments p LEFT JOIN invoices i ON i.payment_key = p.key WHERE p.key = %s", (req.key,))
        row = await cur.fetchone()
        if row is None:
            return False
        stored, status, pi, code, amount, currency, number = row
        if stored != request:
            raise IdempotencyConflict(req.org_id, req.key)
        if status == "succeeded":
            return ChargeResult(req.org_id, req.key, amount, currency, pi, number, True)
        if status == "declined":
            raise PaymentDeclined(f"{req.org_id}: the payment of {Money(amount, currency)} was declined ({code})",
                                  code)
        return True

    async def _decline(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, code: str,
                       pi: str | None) -> PaymentDeclined:
        await conn.execute(
            "UPDATE payments SET status = 'declined', decline_code = %s, "
            "stripe_payment_intent = coalesce(%s, stripe_payment_intent), updated_at = %s "
            "WHERE key = %s AND status = 'pending'", (code, pi, req.now, req.key))
        log.info("payment %s of %s declined: %s", req.key, req.org_id, code)
        return PaymentDeclined(
            f"{req.org_id}: the payment of {Money(t.total_cents, req.currency)} was declined ({code})", code)

    async def _charge_pending(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, fresh: bool,
                              email: str | None, customer: str | None, pm: str | None) -> ChargeResult:
        """The key's row is pending: charge, or take the PaymentIntent an earlier attempt made (not `fresh`)."""
        pi, found = await self._succeeded_intent(conn, req, t, fresh, customer, pm)
        number = await self._record_success(conn, req, t, pi.id, email)
        log.info("payment %s of %s succeeded: %s, invoice %s", req.key, req.org_id, pi.id, number)
        return ChargeResult(req.org_id, req.key, t.total_cents, req.currency, pi.id, number, found)

    async def _succeeded_intent(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, fresh: bool,
                                customer: str | None, pm: str | None) -> tuple[stripe.PaymentIntent, bool]:
        """The PaymentIntent that charged `req.key`: an earlier attempt's (not `fresh`; found: True) or a new one.
        Raises the decline (recorded on the key's pending row, if any) or the refusal; writes no success."""
        found = None if fresh or customer is None else await self._find_payment_intent(customer, req.key)
        if found is not None:
            pi = found
            log.info("payment %s: found %s (%s) from an earlier attempt", req.key, pi.id, pi.status)
        else:
            if customer is None or pm is None:
                # The earlier attempt never reached a charge and there is nothing to charge now: forget it,
                # so the key can be charged once there is a payment method.
                await conn.execute("DELETE FROM payments WHERE key = %s AND status = 'pending'", (req.key,))
                raise self._no_payment_method(req, t)
            try:
                pi = await self.stripe.v1.payment_intents.create_async(
                    params={
                        "amount": t.total_cents, "currency": req.currency.lower(), "customer": customer,
                        "payment_method": pm, "confirm": True, "off_session": True,
                        "metadata": {"billing_key": req.key, "org_id": req.org_id, "purpose": req.purpose},
                    },
                    options={"idempotency_key": stripe_idempotency_key(req.key)})
            except stripe.CardError as e:
                failed = e.error.payment_intent if e.error is not None else None
                if failed is not None and failed.status == "requires_action":
                    await self.stripe.v1.payment_intents.cancel_async(failed.id)
                raise await self._decline(conn, req, t, decline_code_of(e),
                                          failed.id if failed is not None else None) from None
            except stripe.InvalidRequestError as e:
                if e.http_status == 404:  # the customer or its payment method is gone at Stripe
                    raise await self._decline(conn, req, t, "payment_method_unavailable", None) from None
                raise await self._refused(conn, req, e) from None
            except (stripe.AuthenticationError, stripe.PermissionError) as e:
                raise await self._refused(conn, req, e) from None
        if pi.amount != t.total_cents or pi.currency.upper() != req.currency:
            # The conflict error names the key only: the mismatch is for the operator's log.
            log.warning("payment %s of %s: PaymentIntent %s is for %s %s, not %s %s", req.key, req.org_id, pi.id,
                        pi.amount, pi.currency, t.total_cents, req.currency)
            raise IdempotencyConflict(req.org_id, req.key)
        if pi.status == "requires_action":  # authentication required: impossible off-session
            await self.stripe.v1.payment_intents.cancel_async(pi.id)
            raise await self._decline(conn, req, t, "authentication_required", pi.id)
        if pi.status in ("requires_payment_method", "canceled"):
            error = pi.last_payment_error
            # A StripeObject raises AttributeError for a member the answer lacks (localstripe sends no decline_code).
            code = (getattr(error, "decline_code", None) or getattr(error, "code", None)) if error is not None else None
            raise await self._decline(conn, req, t, code or "card_declined", pi.id)
        if pi.status == "processing":
            raise ApplicationError(f"{req.org_id}: payment {pi.id} is still processing", type="PaymentProcessing")
        if pi.status != "succeeded":
            raise ApplicationError(f"{req.org_id}: PaymentIntent {pi.id} is {pi.status}",
                                   type="PaymentStateUnexpected", non_retryable=True)
        return pi, found is not None

    async def _refused(self, conn: AsyncConnection[Any], req: ChargeRequest, e: stripe.StripeError) -> BaseException:
        """Stripe refused to create the PaymentIntent (permanent: stripe_errors.py), and no earlier attempt
        made one: nothing was charged, so the pending row goes, as for a missing payment method. The
        incident this becomes is then the only record, and a retry of the key once it is fixed charges."""
        await conn.execute("DELETE FROM payments WHERE key = %s AND status = 'pending'", (req.key,))
        log.warning("payment %s of %s refused by Stripe, nothing charged: %s", req.key, req.org_id, e)
        return stripe_failure(req.org_id, f"the charge {req.key!r}", e)

    async def _find_payment_intent(self, customer: str, key: str) -> stripe.PaymentIntent | None:
        """The PaymentIntent an earlier attempt created for `key`, if it reached a charge (see the module
        docstring). Charges list by customer with their PaymentIntents expanded: one request per 100."""
        candidates: list[stripe.PaymentIntent] = []
        params: ChargeListParams = {"customer": customer, "limit": 100, "expand": ["data.payment_intent"]}
        while True:
            page = await self.stripe.v1.charges.list_async(params=params)
            for ch in page.data:
                pi = ch.payment_intent
                if isinstance(pi, stripe.PaymentIntent) and metadata_value(pi, "billing_key") == key:
                    candidates.append(pi)
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1].id
        if not candidates:
            return None
        return min(candidates, key=lambda pi: _PI_PREFERENCE.get(pi.status, 9))

    async def _record_success(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, pi: str,
                              email: str | None) -> str:
        """One transaction: the payment succeeded, the year's next invoice number, the invoice. Stripe has
        confirmed `pi` and nothing is written yet (the test kit injects its crash here)."""
        async with conn.transaction():
            await conn.execute(
                "UPDATE payments SET status = 'succeeded', stripe_payment_intent = %s, decline_code = NULL, "
                "updated_at = %s WHERE key = %s AND status = 'pending'", (pi, req.now, req.key))
            return await insert_invoice(conn, req, t, pi, email)  # last: it locks the year's counter row
