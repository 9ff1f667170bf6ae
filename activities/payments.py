"""Stripe customers and charges, and the invoices of successful charges, exactly once per business key.

Exactly once (DESIGN.md section 7), with a Stripe that may ignore Idempotency-Key (localstripe does):

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

Errors: a decline (card error, authentication required off-session) is a non-retryable
`ApplicationError(type="PaymentDeclined")` with the decline code as its only detail, recorded on the
payment row: the same key again raises it again. No payment method is the same error with code
"no_payment_method", but nothing was attempted, so nothing is recorded: the key can be charged later.
Bad input is a non-retryable `ApplicationError(type="InvalidRequest")`, a key reused for other content
one of type "IdempotencyConflict". Network errors and Stripe 5xx/429 propagate as they are: Temporal
retries them (the Stripe client is built with max_network_retries=0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, get_args

import aiohttp
import stripe
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from psycopg import AsyncConnection
from stripe import StripeClient
from stripe.params import ChargeListParams, CustomerListParams, PaymentIntentListParams
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import declined, invalid
from activities.ledger import check_id
from activities.pg import LeanPool
from models.auto_recharge_types import BillingProfile
from models.billing_types import (
    CardKind,
    Charge,
    ChargeRequest,
    ChargeResult,
    CustomerResult,
    EnsureCustomer,
    Invoice,
    InvoiceLine,
)
from models.errors import InvalidRequest
from models.invoicing import Totals, charge_summary, invoice_number, totals
from models.money import Money
from settings import ROOT, Settings
from stack.stripe_server import CARD_DECLINED, CARD_OK, CARD_REQUIRES_AUTHENTICATION, DUMMY_API_KEY

log = logging.getLogger(__name__)

CARDS: dict[str, str] = {
    "ok": CARD_OK,
    "declined": CARD_DECLINED,
    "requires_authentication": CARD_REQUIRES_AUTHENTICATION,
}

# Advisory lock classes (the two-int4 form never collides with one-bigint advisory locks).
_LOCK_PAYMENT = 0x5041  # "PA"
_LOCK_CUSTOMER = 0x4355  # "CU"

_CURRENCY = re.compile(r"[A-Z]{3}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")

_TEMPLATES = Environment(
    loader=FileSystemLoader(ROOT / "templates"),
    autoescape=select_autoescape(["html", "xml"]),
    undefined=StrictUndefined,
)
_INVOICE_TEMPLATE = _TEMPLATES.get_template("invoice.html")  # loaded at import, never on the event loop


class SimulatedCrash(RuntimeError):
    """Raised by the fault-injection hook `Payments.crash_after_stripe` (tests only)."""


# -- the Stripe client -------------------------------------------------------------------------------


def stripe_client(*, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0) -> StripeClient:
    """A StripeClient on aiohttp with no retries of its own (Temporal owns retries). `api_key`: a real
    key (test or live); else `base_url` is a fake Stripe (localstripe) reached with a dummy key."""
    http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout))
    if api_key:
        return stripe.StripeClient(api_key, http_client=http, max_network_retries=0)
    if not base_url:
        raise ValueError("a Stripe client needs STRIPE_API_KEY or the URL of a fake Stripe (localstripe)")
    return stripe.StripeClient(DUMMY_API_KEY, http_client=http, max_network_retries=0,
                               base_addresses={"api": base_url})



def stripe_client_from_settings(settings: Settings, localstripe_url: str | None = None) -> StripeClient:
    """STRIPE_API_KEY when set, else the localstripe at `localstripe_url` (see stack/stripe_server.py)."""
    return stripe_client(api_key=settings.stripe_api_key, base_url=localstripe_url)


async def close_stripe_client(client: StripeClient) -> None:
    """Close the client's aiohttp session (the SDK has no public close)."""
    http = getattr(getattr(client, "_requestor", None), "_client", None)
    if isinstance(http, stripe.AIOHTTPClient):
        await http.close_async()  # type: ignore[no-untyped-call]


# -- helpers -------------------------------------------------------------------------------------------


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise invalid(f"now must be a timezone-aware datetime, got {now!r}")
    return now


def _check_vat(vat_rate: Decimal) -> Decimal:
    if not isinstance(vat_rate, Decimal) or not vat_rate.is_finite() or not Decimal(0) <= vat_rate < 1:
        raise invalid(f"a VAT rate is a fraction in [0, 1), got {vat_rate!r}")
    return vat_rate


def _check_currency(currency: str) -> str:
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise invalid(f"currency must be an ISO 4217 code in capitals (EUR), got {currency!r}")
    return currency


def _check_ids(**ids: str) -> None:
    try:
        for kind, value in ids.items():
            check_id(kind, value)
    except InvalidRequest as e:
        raise invalid(e.message) from None


def _fraction(rate: Decimal) -> str:
    """A canonical text for a rate: 0.2 and 0.20 are the same request."""
    return format(rate.normalize(), "f") if rate else "0"


def _percent(rate: Decimal) -> str:
    return format((rate * 100).normalize(), "f") if rate else "0"


def _line_json(line: InvoiceLine) -> dict[str, Any]:
    return {"description": line.description, "quantity": line.quantity, "unit_cents": line.unit_cents,
            "amount_cents": line.amount_cents}


def _request_json(req: ChargeRequest) -> dict[str, Any]:
    """What makes two charges with one key the same request (a repeat) or not (a conflict)."""
    return {"org_id": req.org_id, "purpose": req.purpose, "currency": req.currency,
            "vat_rate": _fraction(req.vat_rate), "lines": [_line_json(line) for line in req.lines]}


def _check_lines(lines: list[InvoiceLine]) -> None:
    if not isinstance(lines, list) or not lines:
        raise invalid("a charge needs at least one invoice line")
    for line in lines:
        if not isinstance(line, InvoiceLine):
            raise invalid(f"not an invoice line: {line!r}")
        for name in ("quantity", "unit_cents", "amount_cents"):
            value = getattr(line, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise invalid(f"{name} of {line.description!r} must be an integer, got {value!r}")
        if not line.description.strip():
            raise invalid("an invoice line needs a description")
        if line.amount_cents < 0 or line.quantity < 0:
            raise invalid(f"invoice line {line.description!r} is negative")


def render_invoice(*, number: str, issued_at: datetime, org_id: str, email: str | None, currency: str,
                   lines: list[InvoiceLine], t: Totals, stripe_payment_id: str) -> str:
    def money(cents: int) -> str:
        return str(Money(cents, currency))

    return _INVOICE_TEMPLATE.render(
        number=number, date=issued_at.astimezone(UTC).date().isoformat(), org_id=org_id, email=email,
        lines=[{"description": line.description, "quantity": line.quantity, "unit": money(line.unit_cents),
                "amount": money(line.amount_cents)} for line in lines],
        subtotal=money(t.subtotal_cents), tax_rate=_percent(t.tax_rate), tax=money(t.tax_cents),
        total=money(t.total_cents), stripe_payment_id=stripe_payment_id,
    )


def stripe_idempotency_key(key: str) -> str:
    """The business key as Stripe's Idempotency-Key: as is up to Stripe's 255 characters, else a digest
    (org ids and caller keys may each be 200 characters long)."""
    return key if len(key) <= 255 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _metadata(obj: object, name: str) -> str | None:
    """A metadata value of a Stripe object (StripeObjects are not dicts: no .get)."""
    metadata: Any = getattr(obj, "metadata", None)
    value = metadata.to_dict().get(name) if metadata is not None else None
    return value if isinstance(value, str) else None


def _decline_code(err: stripe.CardError) -> str:
    body = err.error
    code = (getattr(body, "decline_code", None) if body is not None else None) or err.code
    return str(code or "card_declined")


_PI_PREFERENCE = {"succeeded": 0, "processing": 1, "requires_capture": 2}


# -- payments ------------------------------------------------------------------------------------------


class Payments:
    """Stripe customers, charges and invoices on PostgreSQL. `db`: a LeanPool (shared) or a database URL
    (a pool of `pool_size` of its own, opened on first use, closed by `close`). `default_card`: a test
    card number attached as the default payment method of every customer created without one (the
    test kit; production passes None)."""

    def __init__(self, db: LeanPool | str, client: StripeClient, *, default_card: str | None = None,
                 pool_size: int = 4) -> None:
        self._own_pool = isinstance(db, str)
        self.pool = LeanPool(db, pool_size) if isinstance(db, str) else db
        self._opened = not self._own_pool
        self.stripe = client
        self.default_card = default_card
        # Fault injection (tests): the next charge of each key here raises SimulatedCrash right after
        # Stripe confirmed it, before anything is written; the key is removed when it fires.
        self.crash_after_stripe: set[str] = set()

    async def _ready(self) -> LeanPool:
        if not self._opened:
            self._opened = True
            await self.pool.open()
        return self.pool

    async def close(self) -> None:
        if self._own_pool and self._opened:
            await self.pool.close()

    @asynccontextmanager
    async def _locked(self, lock_class: int, key: str) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection holding a session advisory lock on (lock_class, key): attempts on one key run one
        at a time, across workers. The lock is released on exit, or with the session if the process or
        the connection dies."""
        pool = await self._ready()
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (lock_class, key))
            try:
                yield conn
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (lock_class, key))
                except BaseException:
                    await conn.close()  # ends the session, and its locks; the pool replaces it
                    raise

    # -- customers -------------------------------------------------------------------------------------

    async def ensure_customer(self, req: EnsureCustomer) -> CustomerResult:
        _check_ids(org_id=req.org_id)
        if not isinstance(req.email, str) or not _EMAIL.fullmatch(req.email):
            raise invalid(f"{req.email!r} is not an email address")
        now = _check_now(req.now)
        _check_vat(req.vat_rate)
        _check_currency(req.currency)
        if req.payment_method is not None and (not isinstance(req.payment_method, str)
                                               or not req.payment_method.strip()):
            raise invalid(f"payment_method must be a Stripe PaymentMethod id, got {req.payment_method!r}")
        async with self._locked(_LOCK_CUSTOMER, req.org_id) as conn:
            cur = await conn.execute(
                "SELECT email, stripe_customer_id, payment_method_id FROM billing_profiles WHERE org_id = %s",
                (req.org_id,))
            before = await cur.fetchone()
            await conn.execute(
                "INSERT INTO billing_profiles (org_id, email, currency, vat_rate, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (org_id) DO UPDATE SET email = EXCLUDED.email, "
                "currency = EXCLUDED.currency, vat_rate = EXCLUDED.vat_rate, updated_at = EXCLUDED.updated_at",
                (req.org_id, req.email, req.currency, req.vat_rate, now, now))
            customer: str | None = before[1] if before else None
            pm: str | None = before[2] if before else None
            new_pm: str | None = None
            if customer is None:
                customer, pm = await self._find_or_create_customer(req.org_id, req.email)
                await self._save_profile(conn, req.org_id, now, customer, pm)
                if req.payment_method is not None:
                    new_pm = req.payment_method
                elif pm is None and self.default_card:
                    new_pm = await self._new_card(self.default_card)
            else:
                if before is not None and before[0] != req.email:
                    await self.stripe.v1.customers.update_async(customer, params={"email": req.email})
                if req.payment_method is not None and req.payment_method != pm:
                    new_pm = req.payment_method
            if new_pm is not None:
                await self._make_default(req.org_id, customer, new_pm)
                pm = new_pm
                await self._save_profile(conn, req.org_id, now, customer, pm)
        return CustomerResult(req.org_id, customer, pm)

    @staticmethod
    async def _save_profile(conn: AsyncConnection[Any], org_id: str, now: datetime | None, customer: str,
                            pm: str | None) -> None:
        """Record the Stripe customer and its default payment method (`now` None: updated_at unchanged)."""
        await conn.execute(
            "UPDATE billing_profiles SET stripe_customer_id = %s, payment_method_id = %s, "
            "updated_at = coalesce(%s::timestamptz, updated_at) WHERE org_id = %s", (customer, pm, now, org_id))

    async def _find_or_create_customer(self, org_id: str, email: str) -> tuple[str, str | None]:
        """The Stripe customer of `org_id`: one created by an earlier attempt that crashed before recording
        it (found by email, tagged metadata.org_id), else a new one. Returns (id, default payment method)."""
        params: CustomerListParams = {"email": email, "limit": 100}
        while True:
            page = await self.stripe.v1.customers.list_async(params=params)
            for c in page.data:
                if _metadata(c, "org_id") == org_id:
                    default = getattr(c.invoice_settings, "default_payment_method", None)
                    return c.id, default if isinstance(default, str) else None
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1].id
        idem = "customer:" + hashlib.sha256(f"{org_id}\n{email}".encode()).hexdigest()[:40]
        created = await self.stripe.v1.customers.create_async(
            params={"email": email, "metadata": {"org_id": org_id}}, options={"idempotency_key": idem})
        log.info("stripe customer %s created for %s", created.id, org_id)
        return created.id, None

    async def _new_card(self, number: str) -> str:
        """A card PaymentMethod with a test card number (localstripe; tests and the test kit)."""
        pm = await self.stripe.v1.payment_methods.create_async(params={
            "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123"}})
        return pm.id

    async def create_card(self, number: str) -> str:
        """A new, unattached card PaymentMethod with a test card number (see stack/stripe_server.py)."""
        return await self._new_card(number)

    async def _make_default(self, org_id: str, customer: str, pm: str) -> None:
        try:
            await self.stripe.v1.payment_methods.attach_async(pm, params={"customer": customer})
        except stripe.CardError as e:
            code = _decline_code(e)
            raise declined(f"{org_id}: the card was declined when attached ({code})", code) from None
        except stripe.InvalidRequestError as e:  # unknown, or attached to another customer
            raise invalid(f"{org_id}: payment method {pm!r} cannot be attached: {e.user_message}") from None
        await self.stripe.v1.customers.update_async(
            customer, params={"invoice_settings": {"default_payment_method": pm}})

    async def set_card(self, org_id: str, kind: CardKind) -> str | None:
        """Give the organization a new default card of `kind` ("ok", "declined": attaches then declines
        every charge, "requires_authentication") or none ("none"). Returns the PaymentMethod id. The
        organization needs a billing profile (ensure_customer); its Stripe customer is created if needed."""
        if kind not in get_args(CardKind):
            raise InvalidRequest(f"card kind must be one of {', '.join(get_args(CardKind))}, got {kind!r}")
        check_id("org_id", org_id)
        async with self._locked(_LOCK_CUSTOMER, org_id) as conn:
            cur = await conn.execute(
                "SELECT email, stripe_customer_id, payment_method_id FROM billing_profiles WHERE org_id = %s",
                (org_id,))
            row = await cur.fetchone()
            if row is None:
                raise InvalidRequest(f"{org_id!r} has no billing profile yet: subscribe it first "
                                     "(ensure_customer), then set its card")
            email, customer, pm = row
            if customer is None:
                customer, pm = await self._find_or_create_customer(org_id, email)
                await self._save_profile(conn, org_id, None, customer, pm)
            if kind == "none":
                await self.stripe.v1.customers.update_async(
                    customer, params={"invoice_settings": {"default_payment_method": ""}})
                await self._save_profile(conn, org_id, None, customer, None)
                return None
            pm = await self._new_card(CARDS[kind])
            await self._make_default(org_id, customer, pm)
            await self._save_profile(conn, org_id, None, customer, pm)
            return pm

    # -- charges ---------------------------------------------------------------------------------------

    async def charge(self, req: ChargeRequest) -> ChargeResult:
        _check_ids(org_id=req.org_id, key=req.key)
        now = _check_now(req.now)
        _check_vat(req.vat_rate)
        currency = _check_currency(req.currency)
        _check_lines(req.lines)
        t = totals(req.lines, req.vat_rate)
        if t.total_cents <= 0:
            raise invalid(f"{req.org_id}: nothing to charge for {req.key!r} (total {Money(t.total_cents, currency)})")
        request = _request_json(req)
        description = req.summary or charge_summary(req.lines, req.vat_rate, currency)
        async with self._locked(_LOCK_PAYMENT, req.key) as conn:
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

    def _no_payment_method(self, req: ChargeRequest, t: Totals) -> ApplicationError:
        log.info("payment %s of %s: no payment method", req.key, req.org_id)
        return declined(f"{req.org_id}: no payment method to charge {Money(t.total_cents, req.currency)} to",
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
            raise ApplicationError(
                f"{req.org_id}: payment key {req.key!r} was already used for a different charge",
                type="IdempotencyConflict", non_retryable=True)
        if status == "succeeded":
            return ChargeResult(req.org_id, req.key, amount, currency, pi, number, True)
        if status == "declined":
            raise declined(f"{req.org_id}: the payment of {Money(amount, currency)} was declined ({code})", code)
        return True

    async def _decline(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, code: str,
                       pi: str | None) -> ApplicationError:
        await conn.execute(
            "UPDATE payments SET status = 'declined', decline_code = %s, "
            "stripe_payment_intent = coalesce(%s, stripe_payment_intent), updated_at = %s "
            "WHERE key = %s AND status = 'pending'", (code, pi, req.now, req.key))
        log.info("payment %s of %s declined: %s", req.key, req.org_id, code)
        return declined(f"{req.org_id}: the payment of {Money(t.total_cents, req.currency)} was declined ({code})",
                        code)

    async def _charge_pending(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, fresh: bool,
                              email: str | None, customer: str | None, pm: str | None) -> ChargeResult:
        """The key's row is pending: charge, or take the PaymentIntent an earlier attempt made (not `fresh`)."""
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
                raise await self._decline(conn, req, t, _decline_code(e),
                                          failed.id if failed is not None else None) from None
            except stripe.InvalidRequestError as e:
                if e.http_status == 404:  # the customer or its payment method is gone at Stripe
                    raise await self._decline(conn, req, t, "payment_method_unavailable", None) from None
                raise ApplicationError(f"{req.org_id}: Stripe refused the charge {req.key!r}: {e.user_message}",
                                       type="StripeRequestRefused", non_retryable=True) from None
        if pi.amount != t.total_cents or pi.currency.upper() != req.currency:
            raise ApplicationError(
                f"{req.org_id}: PaymentIntent {pi.id} for {req.key!r} is for {pi.amount} {pi.currency}, "
                f"not {t.total_cents} {req.currency}", type="IdempotencyConflict", non_retryable=True)
        if pi.status == "requires_action":  # authentication required: impossible off-session
            await self.stripe.v1.payment_intents.cancel_async(pi.id)
            raise await self._decline(conn, req, t, "authentication_required", pi.id)
        if pi.status in ("requires_payment_method", "canceled"):
            error = pi.last_payment_error
            code = (error.decline_code or error.code) if error is not None else None
            raise await self._decline(conn, req, t, code or "card_declined", pi.id)
        if pi.status == "processing":
            raise ApplicationError(f"{req.org_id}: payment {pi.id} is still processing", type="PaymentProcessing")
        if pi.status != "succeeded":
            raise ApplicationError(f"{req.org_id}: PaymentIntent {pi.id} is {pi.status}",
                                   type="PaymentStateUnexpected", non_retryable=True)
        if req.key in self.crash_after_stripe:
            self.crash_after_stripe.discard(req.key)
            raise SimulatedCrash(f"simulated crash after Stripe charged {req.key!r} ({pi.id})")
        number = await self._record_success(conn, req, t, pi.id, email)
        log.info("payment %s of %s succeeded: %s, invoice %s", req.key, req.org_id, pi.id, number)
        return ChargeResult(req.org_id, req.key, t.total_cents, req.currency, pi.id, number, found is not None)

    async def _find_payment_intent(self, customer: str, key: str) -> stripe.PaymentIntent | None:
        """The PaymentIntent an earlier attempt created for `key`, if it reached a charge (see the module
        docstring). Charges list by customer with their PaymentIntents expanded: one request per 100."""
        candidates: list[stripe.PaymentIntent] = []
        params: ChargeListParams = {"customer": customer, "limit": 100, "expand": ["data.payment_intent"]}
        while True:
            page = await self.stripe.v1.charges.list_async(params=params)
            for ch in page.data:
                pi = ch.payment_intent
                if isinstance(pi, stripe.PaymentIntent) and _metadata(pi, "billing_key") == key:
                    candidates.append(pi)
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1].id
        if not candidates:
            return None
        return min(candidates, key=lambda pi: _PI_PREFERENCE.get(pi.status, 9))

    async def _record_success(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, pi: str,
                              email: str | None) -> str:
        """One transaction: the payment succeeded, the year's next invoice number, the invoice."""
        issued = req.now
        year = issued.astimezone(UTC).year
        async with conn.transaction():
            await conn.execute(
                "UPDATE payments SET status = 'succeeded', stripe_payment_intent = %s, decline_code = NULL, "
                "updated_at = %s WHERE key = %s AND status = 'pending'", (pi, issued, req.key))
            # The counter row of the year is locked from here to the commit: take it last.
            cur = await conn.execute(
                "INSERT INTO invoice_counters AS c (year, last) VALUES (%s, 1) "
                "ON CONFLICT (year) DO UPDATE SET last = c.last + 1 RETURNING last", (year,))
            row = await cur.fetchone()
            assert row is not None
            seq = int(row[0])
            number = invoice_number(year, seq)
            html = render_invoice(number=number, issued_at=issued, org_id=req.org_id, email=email,
                                  currency=req.currency, lines=req.lines, t=t, stripe_payment_id=pi)
            await conn.execute(
                "INSERT INTO invoices (number, year, seq, org_id, payment_key, purpose, issued_at, currency, lines, "
                "subtotal_cents, tax_rate, tax_cents, total_cents, stripe_payment_id, html) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s)",
                (number, year, seq, req.org_id, req.key, req.purpose, issued, req.currency,
                 json.dumps([_line_json(line) for line in req.lines]), t.subtotal_cents, t.tax_rate,
                 t.tax_cents, t.total_cents, pi, html))
        return number

    # -- reads (the test kit, the client, operators) ---------------------------------------------------

    async def charges(self, org_id: str) -> list[Charge]:
        """The organization's payments, oldest first."""
        pool = await self._ready()
        rows = await pool.fetchall(
            "SELECT key, org_id, amount_cents, currency, purpose, status, stripe_payment_intent, created_at "
            "FROM payments WHERE org_id = %s ORDER BY created_at, key", (org_id,))
        return [Charge(*row) for row in rows]

    async def invoices(self, org_id: str) -> list[Invoice]:
        """The organization's invoices, oldest first."""
        pool = await self._ready()
        rows = await pool.fetchall(
            "SELECT number, org_id, purpose, issued_at, currency, lines, subtotal_cents, tax_rate, tax_cents, "
            "total_cents, stripe_payment_id, html FROM invoices WHERE org_id = %s ORDER BY issued_at, year, seq",
            (org_id,))
        return [
            Invoice(number, org, purpose, issued_at, currency, [InvoiceLine(**line) for line in lines],
                    subtotal, rate, tax, total, spi, html)
            for number, org, purpose, issued_at, currency, lines, subtotal, rate, tax, total, spi, html in rows
        ]

    async def profile(self, org_id: str) -> BillingProfile | None:
        """The organization's billing contact, currency and VAT rate (None: it has never had a profile)."""
        pool = await self._ready()
        row = await pool.fetchone(
            "SELECT email, currency, vat_rate, payment_method_id IS NOT NULL FROM billing_profiles "
            "WHERE org_id = %s", (org_id,))
        return None if row is None else BillingProfile(org_id, row[0], row[1], Decimal(row[2]), row[3])

    async def customer_id(self, org_id: str) -> str | None:
        pool = await self._ready()
        row = await pool.fetchone("SELECT stripe_customer_id FROM billing_profiles WHERE org_id = %s", (org_id,))
        return row[0] if row else None

    async def stripe_payment_intents(self, org_id: str) -> list[str]:
        """The ids of every PaymentIntent Stripe holds for the organization's customer, oldest first on
        localstripe (tests: exactly one PaymentIntent per charge). localstripe's list takes no customer
        filter: then every PaymentIntent is listed and filtered here."""
        customer = await self.customer_id(org_id)
        if customer is None:
            return []
        ids: list[str] = []
        params: PaymentIntentListParams = {"customer": customer, "limit": 100}
        while True:
            try:
                page = await self.stripe.v1.payment_intents.list_async(params=params)
            except stripe.InvalidRequestError:
                if "customer" not in params:
                    raise
                del params["customer"]  # localstripe: "Unexpected customer"
                continue
            ids += [pi.id for pi in page.data if pi.customer == customer]
            if not page.has_more or not page.data:
                return ids
            params["starting_after"] = page.data[-1].id


# -- Temporal activities ---------------------------------------------------------------------------------


class PaymentActivities:
    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    @activity.defn(name="stripe.ensure_customer")
    async def ensure_customer(self, req: EnsureCustomer) -> CustomerResult:
        result = await self.payments.ensure_customer(req)
        activity.logger.info("customer %s of %s, default payment method %s",
                             result.customer_id, result.org_id, result.payment_method)
        return result

    @activity.defn(name="stripe.charge")
    async def charge(self, req: ChargeRequest) -> ChargeResult:
        try:
            result = await self.payments.charge(req)
        except ApplicationError as e:
            activity.logger.info("charge %s of %s: %s (%s)", req.key, req.org_id, e.type, e.message)
            raise
        activity.logger.info("charge %s of %s: %s %s, invoice %s%s", req.key, req.org_id,
                             Money(result.amount_cents, result.currency), result.payment_intent,
                             result.invoice_number, " (replayed)" if result.replayed else "")
        return result

    def all(self) -> list[object]:
        return [self.ensure_customer, self.charge]
