"""One credit pack, or an amount of credits (seed 004), bought by hand (`BillingClient.buy_credits`), id
models.keys.pack_workflow_id. An amount goes the way a pack goes: a pack of that many credits at the
catalog's per-credit price (Catalog.credit_amount: the total rounded half-up once), on the catalog version
the client priced it on (BuyPack.catalog_version; version 1 for purchases from before versions), so a
replay prices it the same whatever catalog is current then.

Charge the pack (invoice issued), grant a never-expiring bucket, email the receipt: each step keyed by
the purchase's key, so a retried activity, a replayed workflow or the same purchase asked twice charges
once and grants once. A decline raises PaymentDeclined and grants nothing; a charge Stripe refuses for
good (nothing charged) fails the run with its typed error, and the same key may be asked again; a charge
in doubt (Stripe may have charged) is an incident, tried again under its key until its answer is certain.

Once the charge succeeded the purchase completes (failure model rule 2): a grant that fails even for
good is an incident, tried again on a backoff until it goes through (workflows/common.py grant_paid_pack).
Deterministic: no I/O here.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activity_defs import BILLING_PROFILE
from workflows.common import ORG_ID, STATUS, charge_until_answered, declined, grant_paid_pack, notify, reject

with workflow.unsafe.imports_passed_through():
    from models.auto_recharge import credit_lines, pack_lines
    from models.auto_recharge_types import BuyPack, PackPurchase
    from models.billing_types import ChargeRequest, SendEmail
    from models.catalog import CATALOGS
    from models.errors import BillingError, InvalidRequest
    from models.invoicing import charge_summary
    from models.keys import step_key
    from models.ledger_types import GrantPack
    from models.money import Money

FIRST_CATALOG = 1  # the catalog version of purchases started before catalogs had versions


@workflow.defn(name="PackPurchase")
class PackPurchaseWorkflow:
    @workflow.run
    async def run(self, req: BuyPack) -> PackPurchase:
        try:
            catalog = CATALOGS.get(req.catalog_version or FIRST_CATALOG)
            if req.credits is not None:
                pack = catalog.credit_amount(req.credits)
                what = "credits"
            else:
                pack = catalog.pack(req.pack or "")
                what = f"pack {req.pack}"
        except BillingError as exc:
            raise reject(exc) from None
        now = workflow.now()
        profile = await BILLING_PROFILE.run(req.org_id, summary=f"Billing profile of {req.org_id}")
        if profile is None:
            raise reject(InvalidRequest(f"{req.org_id} has no billing profile: subscribe first, or pass "
                                        "email and payment_method to buy_credits"))
        if req.credits is not None:
            lines = credit_lines(pack, 1, catalog.credits.price_cents, profile.currency)
        else:
            lines = pack_lines(req.pack or "", pack, 1)
        summary = charge_summary(lines, profile.vat_rate, profile.currency)
        workflow.upsert_search_attributes([ORG_ID.value_set(req.org_id), STATUS.value_set("charging")])
        workflow.set_current_details(f"**{what}** ({pack.credits} credits) for {req.org_id}: charging")
        try:
            charged = await charge_until_answered(
                ChargeRequest(req.org_id, req.key, "pack", lines, now, profile.vat_rate, profile.currency, summary),
                summary=summary, step="pack charge")
        except ActivityError as err:
            cause = declined(err)
            if cause is None:
                raise
            workflow.upsert_search_attributes([STATUS.value_set("declined")])
            workflow.set_current_details(f"**{what}** for {req.org_id}: declined, nothing granted")
            raise ApplicationError(cause.message, *cause.details, type="PaymentDeclined",
                                   non_retryable=True) from None
        granted = await grant_paid_pack(GrantPack(req.org_id, req.key, pack.credits, now),
                                        summary=f"Grant {pack.credits} {'' if req.credits is not None else 'pack '}"
                                                "credits (never expire)")
        amount = str(Money(charged.amount_cents, charged.currency))
        await notify(
            SendEmail(req.org_id, step_key(req.key, "receipt"), "pack_receipt", profile.email, now, {
                "org_id": req.org_id, "pack": req.pack, "credits": str(pack.credits), "amount": amount,
                "invoice_number": charged.invoice_number}),
            summary="Email pack_receipt to the billing contact")
        workflow.upsert_search_attributes([STATUS.value_set("paid")])
        workflow.set_current_details(
            f"**{what}** ({pack.credits} credits) for {req.org_id}: paid {amount}, "
            f"invoice {charged.invoice_number}")
        return PackPurchase(req.org_id, req.pack, pack.credits, charged.amount_cents, charged.currency,
                            charged.invoice_number, charged.payment_intent, granted.available)
