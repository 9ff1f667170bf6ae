"""Stripe customers and charges (payments/) as Temporal activities. The adapter raises BillingErrors;
`typed_errors` turns them into non-retryable ApplicationErrors typed by class name, here and only here."""

from __future__ import annotations

import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import typed_errors
from models.billing_types import (
    ChargeRequest,
    ChargeResult,
    CustomerResult,
    EnsureCustomer,
    InvoiceState,
    IssueInvoice,
    MarkInvoice,
)
from models.errors import BillingError, PaymentDeclined
from models.money import Money
from payments import Payments
from payments.stripe_errors import stripe_failure
from telemetry import count
from workflows.activity_defs import CHARGE, ENSURE_CUSTOMER, INVOICE_STEP, ISSUE_INVOICE


class PaymentActivities:
    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    @activity.defn(name=ENSURE_CUSTOMER.name)
    @typed_errors
    async def ensure_customer(self, req: EnsureCustomer) -> CustomerResult:
        try:
            result = await self.payments.ensure_customer(req)
        except stripe.StripeError as e:
            raise stripe_failure(req.org_id, "the customer", e) from e
        activity.logger.info("customer %s of %s, default payment method %s",
                             result.customer_id, result.org_id, result.payment_method)
        return result

    @activity.defn(name=CHARGE.name)
    @typed_errors
    async def charge(self, req: ChargeRequest) -> ChargeResult:
        try:
            try:
                result = await self.payments.charge(req)
            except stripe.StripeError as e:
                raise stripe_failure(req.org_id, f"the charge {req.key!r}", e) from e
        except (BillingError, ApplicationError) as e:
            kind = e.type if isinstance(e, ApplicationError) else type(e).__name__
            activity.logger.info("charge %s of %s: %s (%s)", req.key, req.org_id, kind, e.message)
            if isinstance(e, PaymentDeclined):
                count("billing_charges", purpose=req.purpose, outcome="declined")
            raise
        count("billing_charges", purpose=req.purpose, outcome="replayed" if result.replayed else "succeeded")
        activity.logger.info("charge %s of %s: %s %s, invoice %s%s", req.key, req.org_id,
                             Money(result.amount_cents, result.currency), result.payment_intent,
                             result.invoice_number, " (replayed)" if result.replayed else "")
        return result

    @activity.defn(name=ISSUE_INVOICE.name)
    @typed_errors
    async def issue_invoice(self, req: IssueInvoice) -> ChargeResult:
        result = await self.payments.issue_invoice(req)
        count("billing_invoices_open", purpose=req.charge.purpose, outcome="replayed" if result.replayed else "issued")
        return result

    @activity.defn(name=INVOICE_STEP.name)
    @typed_errors
    async def invoice_step(self, req: MarkInvoice) -> InvoiceState:
        return await self.payments.mark_invoice(req)

    def all(self) -> list[object]:
        return [self.ensure_customer, self.charge, self.issue_invoice, self.invoice_step]
