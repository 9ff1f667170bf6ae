"""Credit packs bought by hand through the test kit (time-skipping Temporal, PostgreSQL, localstripe,
SMTP): charged once, granted once, whatever is retried, crashed or asked twice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from models.errors import IdempotencyConflict, InvalidRequest, PaymentDeclined, UnknownOrganization
from models.keys import pack_workflow_id as workflow_id
from stack.stripe_server import CARD_DECLINED_AT_ATTACH, CARD_OK
from testkit import TestKit

EMAIL = "billing@acme.test"


async def test_a_pack_is_charged_invoiced_granted_and_receipted(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    bought = await kit.billing.buy_credits(org, pack="1000", idempotency_key="p1")
    assert (bought.pack, bought.credits, bought.amount_cents, bought.currency) == ("1000", Decimal(1000), 4500, "EUR")
    assert bought.available == Decimal(11000)
    pack_charges = [c for c in kit.charges(org) if c.purpose == "pack"]
    assert [(c.key, c.amount_cents, c.status) for c in pack_charges] == [(f"{org}:pack:p1", 4500, "succeeded")]
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "pack"]
    assert (invoice.number, invoice.total_cents) == (bought.invoice_number, 4500)
    assert "Credit pack 1000" in invoice.lines[0].description
    bal = await kit.billing.balance(org)
    assert (bal.topup, bal.plan, bal.available) == (Decimal(1000), Decimal(10000), Decimal(11000))
    await kit.settle()
    receipt = [m for m in kit.emails(org) if m.template == "pack_receipt"]
    assert len(receipt) == 1 and bought.invoice_number in receipt[0].subject and receipt[0].to == EMAIL


async def test_pack_credits_outlive_the_period_and_are_drawn_after_plan_credits(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="starter", seats=1, email=EMAIL)
    await kit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=100, idempotency_key="d1")
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.topup) == (Decimal(2900), Decimal(500))  # plan credits first: they expire
    assert sub.period_end is not None
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.topup) == (Decimal(3000), Decimal(500))  # plan renewed, the pack kept whole


async def test_the_same_purchase_twice_is_charged_and_granted_once(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    first = await kit.billing.buy_credits(org, pack="500", idempotency_key="twice")
    again = await kit.billing.buy_credits(org, pack="500", idempotency_key="twice")
    assert again == first
    assert len([c for c in kit.charges(org) if c.purpose == "pack"]) == 1
    assert (await kit.billing.balance(org)).topup == Decimal(500)
    with pytest.raises(IdempotencyConflict):
        await kit.billing.buy_credits(org, pack="1000", idempotency_key="twice")
    assert (await kit.billing.balance(org)).topup == Decimal(500)
    await kit.settle()
    assert [m.template for m in kit.emails(org)].count("pack_receipt") == 1


async def test_a_crash_after_stripe_charged_the_pack_charges_and_grants_once(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    key = f"{org}:pack:crash"
    kit.payments.crash_after_stripe.add(key)  # the charge activity dies after Stripe confirmed
    bought = await kit.billing.buy_credits(org, pack="2500", idempotency_key="crash")
    assert key not in kit.payments.crash_after_stripe, "the crash did not fire"
    assert bought.amount_cents == 10000
    assert [(c.key, c.status) for c in kit.charges(org) if c.purpose == "pack"] == [(key, "succeeded")]
    assert len(await kit.payments.stripe_payment_intents(org)) == 2  # the subscription's and the pack's
    assert (await kit.billing.balance(org)).topup == Decimal(2500)


async def test_a_declined_pack_raises_and_grants_nothing(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.use_card(org, "declined")
    with pytest.raises(PaymentDeclined):
        await kit.billing.buy_credits(org, pack="1000", idempotency_key="p1")
    assert (await kit.billing.balance(org)).topup == Decimal(0)
    assert [c.status for c in kit.charges(org) if c.purpose == "pack"] == ["declined"]
    assert [i.purpose for i in await kit.billing.invoices(org)] == ["subscription"]
    with pytest.raises(PaymentDeclined):  # the same key answers the same: use a new key for a new attempt
        await kit.billing.buy_credits(org, pack="1000", idempotency_key="p1")
    await kit.use_card(org, "ok")
    assert (await kit.billing.buy_credits(org, pack="1000", idempotency_key="p2")).credits == Decimal(1000)


async def test_a_free_organization_buys_with_its_contact_and_card(kit: TestKit, org: str) -> None:
    await kit.billing.open_wallet(org)
    with pytest.raises(InvalidRequest, match="no billing profile"):
        await kit.billing.buy_credits(org, pack="500", idempotency_key="p0")
    card = await kit.payments.create_card(CARD_OK)
    bought = await kit.billing.buy_credits(org, pack="500", idempotency_key="p1", email=EMAIL,
                                           payment_method=card)
    assert (bought.amount_cents, bought.available) == (2500, Decimal(550))  # 50 free credits today + 500


async def test_a_card_declined_when_attached_or_a_bad_contact_is_refused_typed(kit: TestKit, org: str) -> None:
    await kit.billing.open_wallet(org)
    bad_card = await kit.payments.create_card(CARD_DECLINED_AT_ATTACH)
    with pytest.raises(PaymentDeclined):
        await kit.billing.buy_credits(org, pack="500", idempotency_key="p1", email=EMAIL, payment_method=bad_card)
    with pytest.raises(InvalidRequest, match="not an email address"):
        await kit.billing.buy_credits(org, pack="500", idempotency_key="p2", email="nobody",
                                      payment_method=await kit.payments.create_card(CARD_OK))
    assert kit.charges(org) == [] and (await kit.billing.balance(org)).topup == Decimal(0)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"pack": "750"}, InvalidRequest, "unknown pack"),
    ({"pack": 500}, InvalidRequest, "pack must be a name"),
    ({"pack": "500", "idempotency_key": ""}, InvalidRequest, "idempotency_key"),
])
async def test_bad_purchases_are_refused_and_start_nothing(
    kit: TestKit, org: str, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    with pytest.raises(error, match=message):
        await kit.billing.buy_credits(org, **kwargs)
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]


async def test_a_pack_for_an_unknown_organization_is_refused(kit: TestKit, org: str) -> None:
    with pytest.raises(UnknownOrganization):
        await kit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    with pytest.raises(Exception):  # noqa: B017 - any "not found": no workflow was started
        await kit.env.client.get_workflow_handle(workflow_id(org, "p1")).describe()
