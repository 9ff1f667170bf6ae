"""Billing profiles and their Stripe customers: one customer per organization, even when an attempt
crashed after Stripe created it (it is found again by email and metadata.org_id)."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

import stripe
from psycopg import AsyncConnection
from stripe.params import CustomerListParams

from models.auto_recharge_types import BillingProfile
from models.billing_types import CustomerResult, EnsureCustomer
from models.checks import check_email, check_id, check_rate, check_time
from models.errors import InvalidRequest, PaymentDeclined
from payments.base import LOCK_CUSTOMER, PaymentsBase
from payments.checks import check_currency, check_payment_method
from payments.stripe_client import decline_code_of, metadata_value

log = logging.getLogger(__name__)


class Customers(PaymentsBase):
    async def _default_payment_method(self) -> str | None:
        """The payment method a customer created without one gets: none in production (the customer adds
        one); the test kit overrides it to give every new customer a working test card."""
        return None

    async def ensure_customer(self, req: EnsureCustomer) -> CustomerResult:
        check_id("org_id", req.org_id)
        check_email("email", req.email)
        now = check_time("now", req.now)
        check_rate("vat_rate", req.vat_rate)
        check_currency(req.currency)
        check_payment_method(req.payment_method)
        _ = self.stripe  # no Stripe configured: refused here, before the profile is written
        if req.payment_method is not None:
            await self.check_payment_method_known(req.org_id, req.payment_method)  # before anything is written
        async with self._locked(LOCK_CUSTOMER, req.org_id) as conn:
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
                elif pm is None:
                    new_pm = await self._default_payment_method()
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
                if metadata_value(c, "org_id") == org_id:
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

    async def check_payment_method_known(self, org_id: str, pm: str) -> None:
        """Refuse a payment method Stripe does not know (InvalidRequest) before anything is written: one
        read. One attached to another customer is refused later, at attach."""
        try:
            await self.stripe.v1.payment_methods.retrieve_async(pm)
        except stripe.InvalidRequestError as e:
            if e.http_status == 404:
                raise InvalidRequest(f"{org_id}: payment method {pm!r} is unknown to Stripe") from None
            raise

    async def _make_default(self, org_id: str, customer: str, pm: str) -> None:
        try:
            await self.stripe.v1.payment_methods.attach_async(pm, params={"customer": customer})
        except stripe.CardError as e:
            code = decline_code_of(e)
            raise PaymentDeclined(f"{org_id}: the card was declined when attached ({code})", code) from None
        except stripe.InvalidRequestError as e:  # unknown, or attached to another customer
            raise InvalidRequest(f"{org_id}: payment method {pm!r} cannot be attached: {e.user_message}") from None
        await self.stripe.v1.customers.update_async(
            customer, params={"invoice_settings": {"default_payment_method": pm}})

    # -- reads -----------------------------------------------------------------------------------------

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
