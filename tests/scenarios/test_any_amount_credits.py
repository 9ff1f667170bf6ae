"""Any amount of credits (seed 004, issue 12) through the test kit: bought at the catalog's per-credit price
(0.20 each, at least 100) and charged and granted exactly once like a pack, whatever is asked twice or fails
at Stripe; auto-recharge adding an amount instead of a pack; a purchase priced on the catalog version current
when it was asked. The kit's Stripe client goes through the fault proxy (testkit/faults.py) here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from temporalio.worker import Replayer

from models.catalog import CATALOG, CATALOGS
from models.errors import IdempotencyConflict, InvalidRequest, PaymentDeclined
from models.keys import pack_workflow_id, recharge_workflow_id
from temporal_client import DATA_CONVERTER
from testkit import TestKit, start_testkit
from testkit.faults import StripeFaultProxy
from tests.support.keys import stamp
from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.pack_purchase import PackPurchaseWorkflow

EMAIL = "billing@acme.test"
PI_PATH = "/v1/payment_intents"
D = Decimal


@pytest.fixture(scope="module")
async def kit(database_url: str) -> AsyncIterator[TestKit]:
    """A kit of this module's own whose Stripe client goes through the fault proxy."""
    async with start_testkit(database_url=database_url, stripe_faults=True) as k:
        yield k


def proxy(kit: TestKit) -> StripeFaultProxy:
    assert kit.stripe_faults is not None
    return kit.stripe_faults


def purchases(kit: TestKit, org: str, purpose: str = "pack") -> list[tuple[str, int, str]]:
    return [(c.key, c.amount_cents, c.status) for c in kit.charges(org) if c.purpose == purpose]


async def assert_nothing_started(kit: TestKit, org: str, key: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any "not found": no workflow was started
        await kit.env.client.get_workflow_handle(pack_workflow_id(org, key)).describe()


# -- buying an amount ------------------------------------------------------------------------------------------


async def test_100_credits_are_bought_for_20_eur_invoiced_granted_and_receipted_once(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    bought = await kit.billing.buy_credits(org, credits=D(100), idempotency_key="c1")
    assert (bought.pack, bought.credits, bought.amount_cents, bought.currency) == (None, D(100), 2000, "EUR")
    assert bought.available == D(10100)
    assert purchases(kit, org) == [(f"{org}:pack:c1", 2000, "succeeded")]
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "pack"]
    assert (invoice.number, invoice.subtotal_cents, invoice.tax_cents, invoice.total_cents) == \
        (bought.invoice_number, 2000, 0, 2000)
    assert [(line.description, line.quantity, line.unit_cents, line.amount_cents) for line in invoice.lines] == \
        [("Credits: 100 at EUR 0.20 each (never expire)", 1, 2000, 2000)]
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.topup, bal.available) == (D(10000), D(100), D(10100))
    await kit.settle()
    [receipt] = [m for m in kit.emails(org) if m.template == "pack_receipt"]
    assert receipt.subject == f"Receipt {bought.invoice_number}: 100 credits for EUR 20.00"
    assert "we charged EUR 20.00 for 100 credits." in receipt.text and "credit pack" not in receipt.text
    # Asked again: the first purchase answers, nothing more is charged or granted.
    assert await kit.billing.buy_credits(org, credits=D("100.000"), idempotency_key="c1") == bought
    assert len(purchases(kit, org)) == 1 and (await kit.billing.balance(org)).topup == D(100)


async def test_fractional_amounts_and_vat_are_exact(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="starter", seats=1, email=EMAIL, vat_rate=D("0.20"))
    bought = await kit.billing.buy_credits(org, credits=D("123.456"), idempotency_key="c1")  # 2469.12 cents
    assert (bought.credits, bought.amount_cents) == (D("123.456"), 2963)  # 24.69 + 20% VAT 4.94
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "pack"]
    assert (invoice.subtotal_cents, invoice.tax_cents, invoice.total_cents) == (2469, 494, 2963)
    assert invoice.lines[0].description == "Credits: 123.456 at EUR 0.20 each (never expire)"
    assert (await kit.billing.balance(org)).topup == D("123.456")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"credits": D(99)}, r"at least 100 credits per purchase, got Decimal\('99'\)"),
    ({"credits": D("99.999")}, "at least 100 credits"),
    ({"credits": D(-100)}, "at least 100 credits"),
    ({"credits": D("100.0001")}, "at most 3 decimal places"),
    ({"credits": D("NaN")}, "finite"),
    ({"credits": "100"}, "Decimal number of credits"),
    ({"credits": 100.0}, "Decimal number of credits"),
    ({"credits": D(10**7)}, "at most 99,999,999 cents"),
    ({"credits": D(100), "pack": "500"}, "exactly one of pack and credits"),
    ({}, "exactly one of pack and credits"),
])
async def test_a_bad_amount_is_refused_clearly_and_charges_nothing(
    kit: TestKit, org: str, kwargs: dict[str, object], message: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    with pytest.raises(InvalidRequest, match=message):
        await kit.billing.buy_credits(org, idempotency_key="bad", **kwargs)
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]
    assert (await kit.billing.balance(org)).topup == D(0)
    await assert_nothing_started(kit, org, "bad")


async def test_duplicate_requests_charge_once_and_another_purchase_under_the_key_conflicts(
    kit: TestKit, org: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    together = await asyncio.gather(*(kit.billing.buy_credits(org, credits=D(250), idempotency_key="dup")
                                      for _ in range(5)))
    assert all(r == together[0] for r in together) and together[0].amount_cents == 5000
    assert purchases(kit, org) == [(f"{org}:pack:dup", 5000, "succeeded")]
    assert len(await kit.payments.stripe_payment_intents(org)) == 2  # the subscription's and this one
    for other in ({"credits": D(300)}, {"pack": "500"}):
        with pytest.raises(IdempotencyConflict):
            await kit.billing.buy_credits(org, idempotency_key="dup", **other)
    bought = await kit.billing.buy_credits(org, pack="500", idempotency_key="pack-1")
    with pytest.raises(IdempotencyConflict):  # a pack's key does not buy an amount either
        await kit.billing.buy_credits(org, credits=D(500), idempotency_key="pack-1")
    assert bought.pack == "500"
    assert (await kit.billing.balance(org)).topup == D(750)
    await kit.settle()
    assert [m.template for m in kit.emails(org)].count("pack_receipt") == 2


async def test_a_stripe_500_is_retried_and_charges_once(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    fault = proxy(kit).inject("500", path=PI_PATH, key_prefix=f"{org}:pack:")
    bought = await kit.billing.buy_credits(org, credits=D(100), idempotency_key="c500")
    assert fault.fired == 1
    assert len(proxy(kit).seen(method="POST", path=PI_PATH, key_prefix=f"{org}:pack:")) == 2  # faulted, retried
    assert purchases(kit, org) == [(f"{org}:pack:c500", 2000, "succeeded")]
    intents = await kit.payments.stripe_payment_intents(org)
    assert len(intents) == 2 and bought.payment_intent in intents
    assert (await kit.billing.balance(org)).topup == D(100)
    assert (await kit.audit(orgs=[org])).findings == []


async def test_a_declined_card_grants_nothing(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.use_card(org, "declined")
    with pytest.raises(PaymentDeclined):
        await kit.billing.buy_credits(org, credits=D(100), idempotency_key="c1")
    assert purchases(kit, org) == [(f"{org}:pack:c1", 2000, "declined")]
    assert (await kit.billing.balance(org)).topup == D(0)
    await kit.use_card(org, "ok")
    assert (await kit.billing.buy_credits(org, credits=D(100), idempotency_key="c2")).credits == D(100)


async def test_a_purchase_is_priced_on_the_catalog_version_current_when_asked(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    cheaper = CATALOG.revised(version=2, credits={"price_cents": "0.4", "minimum": "1000"})
    with CATALOGS.published_for_test(cheaper):
        with pytest.raises(InvalidRequest, match="at least 1000 credits"):
            await kit.billing.buy_credits(org, credits=D(999), idempotency_key="v2-small")
        bought = await kit.billing.buy_credits(org, credits=D(5000), idempotency_key="v2")
        assert (bought.credits, bought.amount_cents) == (D(5000), 2000)  # 5,000 x 0.4 cents
        [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "pack"]
        assert invoice.lines[0].description == "Credits: 5000 at EUR 0.004 each (never expire)"
    assert CATALOGS.current is CATALOG
    assert (await kit.billing.buy_credits(org, credits=D(100), idempotency_key="v1")).amount_cents == 2000


# -- auto-recharge by an amount ----------------------------------------------------------------------------------


async def drain_to(kit: TestKit, org: str, left: int, key: str) -> bool:
    available = (await kit.billing.balance(org)).available
    result = await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=available - left,
                                     idempotency_key=key)
    await kit.settle()
    return result.recharge_triggered


async def test_auto_recharge_adds_250_credits_for_50_eur_once(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    settings = await kit.billing.set_auto_recharge(org, threshold=D(100), credits=D(250), spending_limit_cents=10000)
    assert (settings.pack, settings.credits, settings.threshold, settings.enabled) == (None, D(250), D(100), True)
    assert await kit.billing.auto_recharge(org) == settings
    assert await drain_to(kit, org, 50, "d1")
    key = f"{org}:{stamp(sub.period_start)}:auto_recharge:1"
    assert purchases(kit, org, "auto_recharge") == [(key, 5000, "succeeded")]
    assert (await kit.billing.balance(org)).available == D(300)  # 50 + 250, granted once
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "auto_recharge"]
    assert [(line.description, line.quantity, line.unit_cents, line.amount_cents) for line in invoice.lines] == \
        [("Credits: 250 at EUR 0.20 each (never expire)", 1, 5000, 5000)]
    [receipt] = [m for m in kit.emails(org) if m.template == "auto_recharge_receipt"]
    assert receipt.subject == "Auto-recharge: 250 credits added for EUR 50.00"
    assert "so we added 250" in receipt.text and "pack" not in receipt.text
    # A second crossing: another 250, the limit (100.00) now spent.
    assert await drain_to(kit, org, 40, "d2")
    assert [p[1:] for p in purchases(kit, org, "auto_recharge")] == [(5000, "succeeded")] * 2
    assert (await kit.billing.balance(org)).available == D(290)
    # A third: the limit holds, nothing charged.
    assert await drain_to(kit, org, 30, "d3")
    assert len(purchases(kit, org, "auto_recharge")) == 2
    assert [m.template for m in kit.emails(org)].count("auto_recharge_limit") == 1
    assert (await kit.audit(orgs=[org])).findings == []


async def test_auto_recharge_buys_as_many_amounts_as_bring_the_balance_above_in_one_charge(
    kit: TestKit, org: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=D(500), credits=D("150.5"), spending_limit_cents=20000)
    assert await drain_to(kit, org, 10, "d1")
    [(_, cents, status)] = purchases(kit, org, "auto_recharge")
    assert (cents, status) == (12040, "succeeded")  # 4 x 150.5 credits at 30.10 each: 10 + 602 > 500
    assert (await kit.billing.balance(org)).available == D(612)
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "auto_recharge"]
    assert [(line.quantity, line.unit_cents, line.amount_cents) for line in invoice.lines] == [(4, 3010, 12040)]


async def test_auto_recharge_of_an_amount_goes_through_a_stripe_500_once(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=D(100), credits=D(250))
    key = f"{org}:{stamp(sub.period_start)}:auto_recharge:1"
    fault = proxy(kit).inject("500", path=PI_PATH, key_prefix=key)
    assert await drain_to(kit, org, 50, "d1")
    assert fault.fired == 1
    assert purchases(kit, org, "auto_recharge") == [(key, 5000, "succeeded")]
    assert len(await kit.payments.stripe_payment_intents(org)) == 2
    assert (await kit.billing.balance(org)).available == D(300)
    # Concurrent crossings after it collapse: nothing more is due (300 is above 100).
    results = await asyncio.gather(*(kit.billing.debit(org, action="ai_chat", tier="fast", quantity=1,
                                                       idempotency_key=f"more-{n}") for n in range(10)))
    await kit.settle()
    assert not any(r.recharge_triggered for r in results) and len(purchases(kit, org, "auto_recharge")) == 1
    assert (await kit.audit(orgs=[org])).findings == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"credits": D(99)}, "at least 100 credits"),
    ({"credits": D(250), "pack": "500"}, "exactly one of pack and credits"),
    ({"credits": D(250), "spending_limit_cents": 4999}, "cannot buy even one 250 credits"),
    ({"credits": 250.0}, "Decimal number of credits"),
])
async def test_bad_amount_settings_are_refused_and_change_nothing(
    kit: TestKit, org: str, kwargs: dict[str, object], message: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    before = await kit.billing.set_auto_recharge(org, threshold=D(10), pack="500")
    with pytest.raises(InvalidRequest, match=message):
        await kit.billing.set_auto_recharge(org, threshold=D(100), **kwargs)  # type: ignore[arg-type]
    assert await kit.billing.auto_recharge(org) == before


async def test_amount_purchases_and_recharges_replay(kit: TestKit, org: str) -> None:
    """Determinism: a purchase of an amount, one priced on a version published for the test, and an
    auto-recharge by an amount replay without a non-determinism error (each prices from the catalog version
    its input or its read names, not from the catalog current at replay)."""
    sub = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.billing.buy_credits(org, credits=D(100), idempotency_key="r1")
    with CATALOGS.published_for_test(CATALOG.revised(version=2, credits={"price_cents": "0.4"})):
        assert (await kit.billing.buy_credits(org, credits=D(5000), idempotency_key="r2")).amount_cents == 2000
        await kit.billing.set_auto_recharge(org, threshold=D(100), credits=D(250))
        assert await drain_to(kit, org, 50, "d1")
        assert purchases(kit, org, "auto_recharge") == [(f"{org}:{stamp(sub.period_start)}:auto_recharge:1", 100,
                                                         "succeeded")]  # 250 x 0.4 cents on version 2
        histories = [await kit.env.client.get_workflow_handle(pack_workflow_id(org, key)).fetch_history()
                     for key in ("r1", "r2")]
        histories.append(await kit.env.client.get_workflow_handle(recharge_workflow_id(org)).fetch_history())
        replayer = Replayer(workflows=[AutoRechargeWorkflow, PackPurchaseWorkflow], data_converter=DATA_CONVERTER)
        for history in histories:
            await replayer.replay_workflow(history)
