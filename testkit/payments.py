"""`Payments` with what only tests and the fake Stripe need: test cards, a default card for new
customers, the Stripe-side read of PaymentIntents, and a crash injected right after Stripe charged."""

from __future__ import annotations

from typing import Any, get_args

import stripe
from psycopg import AsyncConnection
from stripe import StripeClient
from stripe.params import PaymentIntentListParams
from temporalio.exceptions import ApplicationError

from ledger.pool import LeanPool
from models.billing_types import CardKind, ChargeRequest, ChargeResult
from models.checks import check_id
from models.errors import InvalidRequest, PaymentProviderRefused
from models.invoicing import Totals
from payments import Payments
from payments.base import LOCK_CUSTOMER
from stack.stripe_server import CARD_DECLINED, CARD_OK, CARD_REQUIRES_AUTHENTICATION

CARDS: dict[str, str] = {
    "ok": CARD_OK,
    "declined": CARD_DECLINED,
    "requires_authentication": CARD_REQUIRES_AUTHENTICATION,
}


class SimulatedCrash(RuntimeError):
    """Raised by the fault-injection hook `KitPayments.crash_after_stripe`."""


class KitPayments(Payments):
    """`default_card`: a test card number attached as the default payment method of every customer created
    without one (None: no card, as in production)."""

    def __init__(self, db: LeanPool | str, client: StripeClient, *, default_card: str | None = None,
                 pool_size: int = 4) -> None:
        super().__init__(db, client, pool_size=pool_size)
        self.default_card = default_card
        # Fault injection: the next charge of each key here raises SimulatedCrash right after Stripe
        # confirmed it, before anything is written; the key is removed when it fires.
        self.crash_after_stripe: set[str] = set()
        # Fault injection: charges of these keys are refused as Stripe refuses a bad request (a 400): a
        # permanent error, not retried in place, until the key is removed.
        self.refuse_charges: set[str] = set()
        # Fault injection: charges of these keys reach Stripe (the PaymentIntent succeeds) and then fail
        # for good before anything is recorded, as a lost answer does, until the key is removed.
        self.lose_after_stripe: set[str] = set()

    async def charge(self, req: ChargeRequest) -> ChargeResult:
        if req.key in self.refuse_charges:
            raise PaymentProviderRefused(f"{req.org_id}: Stripe refused the charge {req.key!r} (injected)",
                                         "invalid_request")
        return await super().charge(req)

    async def _default_payment_method(self) -> str | None:
        return await self.create_card(self.default_card) if self.default_card else None

    def _after_stripe(self, key: str, pi: str) -> None:
        """The fault seams, right after Stripe confirmed `pi` for `key` and before anything is written."""
        if key in self.crash_after_stripe:
            self.crash_after_stripe.discard(key)
            raise SimulatedCrash(f"simulated crash after Stripe charged {key!r} ({pi})")
        if key in self.lose_after_stripe:
            raise ApplicationError(f"the answer to {key!r} was lost after Stripe charged {pi} (injected)",
                                   type="SimulatedLoss", non_retryable=True)

    async def _record_success(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, pi: str,
                              email: str | None) -> str:
        self._after_stripe(req.key, pi)
        return await super()._record_success(conn, req, t, pi, email)

    async def _record_invoice_paid(self, conn: AsyncConnection[Any], req: ChargeRequest, payment_key: str,
                                   pi: str) -> None:
        self._after_stripe(req.key, pi)
        await super()._record_invoice_paid(conn, req, payment_key, pi)

    async def create_card(self, number: str) -> str:
        """A new, unattached card PaymentMethod with a test card number (see stack/stripe_server.py)."""
        pm = await self.stripe.v1.payment_methods.create_async(params={
            "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123"}})
        return pm.id

    async def set_card(self, org_id: str, kind: CardKind) -> str | None:
        """Give the organization a new default card of `kind` ("ok", "declined": attaches then declines
        every charge, "requires_authentication") or none ("none"). Returns the PaymentMethod id. The
        organization needs a billing profile (ensure_customer); its Stripe customer is created if needed."""
        if kind not in get_args(CardKind):
            raise InvalidRequest(f"card kind must be one of {', '.join(get_args(CardKind))}, got {kind!r}")
        check_id("org_id", org_id)
        async with self._locked(LOCK_CUSTOMER, org_id) as conn:
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
            pm = await self.create_card(CARDS[kind])
            await self._make_default(org_id, customer, pm)
            await self._save_profile(conn, org_id, None, customer, pm)
            return pm

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
