"""The subscription lifecycle through the test kit (time-skipping Temporal, real PostgreSQL, localstripe,
SMTP): every rule of docs/product.md and docs/lifecycle.md with exact amounts."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from models.errors import InvalidRequest, PaymentDeclined
from testkit import TestKit

EMAIL = "billing@acme.test"


def templates(kit: TestKit, org: str) -> list[str]:
    return [m.template for m in kit.emails(org)]


async def past(kit: TestKit, moment: datetime | None, plus: timedelta = timedelta(minutes=1)) -> None:
    """Advance the kit's clock to just after `moment` (a period end, a trial end...)."""
    assert moment is not None
    await kit.advance(moment + plus - kit.now())


async def test_subscribe_charges_seats_times_price_and_grants_the_allocation(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    assert (sub.plan, sub.seats, sub.status, sub.interval) == ("pro", 3, "active", "month")
    [charge] = kit.charges(org)
    assert (charge.amount_cents, charge.currency, charge.purpose, charge.status) == (27000, "EUR", "subscription",
                                                                                     "succeeded")
    [invoice] = await kit.billing.invoices(org)
    assert invoice.total_cents == 27000 and invoice.number.startswith(f"INV-{sub.period_start:%Y}-")
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.allocation, bal.plan_name) == (Decimal(10000), Decimal(10000), "pro")
    await kit.settle()
    assert templates(kit, org) == ["receipt"]
    assert kit.emails(org)[0].to == EMAIL


async def period_fraction(kit: TestKit, org: str, fraction: float) -> None:
    """Advance to `fraction` of the organization's current period."""
    sub = await kit.billing.subscription(org)
    assert sub.period_start is not None and sub.period_end is not None
    target = sub.period_start + (sub.period_end - sub.period_start) * fraction
    await kit.advance(target - kit.now())


async def test_renewal_charges_again_expires_what_is_left_and_grants_anew(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    await kit.billing.debit(org, action="insight", tier="pro", quantity=10, idempotency_key="k1")  # 1,500
    assert (await kit.billing.balance(org)).plan == Decimal(8500)
    await past(kit, first.period_end)
    sub = await kit.billing.subscription(org)
    assert (sub.status, sub.renewals, sub.period_start) == ("active", 1, first.period_end)
    assert [(c.amount_cents, c.purpose) for c in kit.charges(org)] == [(27000, "subscription"), (27000, "renewal")]
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.consumed_this_period) == (Decimal(10000), Decimal(0))
    kinds = [t.kind for t in await kit.billing.transactions(org)]
    assert kinds.count("expire") == 1 and kinds.count("grant") == 2
    assert templates(kit, org) == ["receipt", "receipt"]
    assert len(await kit.billing.invoices(org)) == 2


async def test_upgrade_charges_the_difference_for_what_is_left_and_applies_the_credit_rule(
    kit: TestKit, org: str
) -> None:
    await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    await kit.billing.debit(org, action="insight", tier="pro", quantity=20, idempotency_key="k1")  # 3,000
    await period_fraction(kit, org, 2 / 3)
    sub = await kit.billing.upgrade(org, plan="enterprise")
    assert (sub.plan, sub.seats, sub.status) == ("enterprise", 3, "active")
    upgrade = kit.charges(org)[-1]
    assert (upgrade.purpose, upgrade.amount_cents) == ("upgrade", 11000)  # (200 - 90) x 3 x 1/3
    bal = await kit.billing.balance(org)
    assert (bal.plan, bal.allocation, bal.plan_name) == (Decimal(37000), Decimal(40000), "enterprise")
    await kit.billing.debit(org, action="ai_chat", tier="ultra", idempotency_key="k2")  # ultra now allowed
    await kit.settle()
    assert templates(kit, org) == ["receipt", "upgrade_confirmed"]


async def test_a_declined_upgrade_leaves_the_old_plan_in_place(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="starter", seats=2, email=EMAIL)
    await kit.use_card(org, "declined")
    with pytest.raises(PaymentDeclined):
        await kit.billing.upgrade(org, plan="pro")
    sub = await kit.billing.subscription(org)
    assert (sub.plan, sub.status) == ("starter", "active")
    assert (await kit.billing.balance(org)).plan_name == "starter"
    assert [c.status for c in kit.charges(org)] == ["succeeded", "declined"]


async def test_downgrade_waits_for_period_end_and_can_be_replaced_or_withdrawn(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="enterprise", seats=2, email=EMAIL)
    assert (await kit.billing.downgrade(org, plan="pro")).pending_plan == "pro"
    assert (await kit.billing.downgrade(org, plan="starter")).pending_plan == "starter"  # replaced
    assert (await kit.billing.downgrade(org, plan="enterprise")).pending_plan is None    # withdrawn
    sub = await kit.billing.downgrade(org, plan="starter")
    assert (sub.plan, sub.pending_plan) == ("enterprise", "starter")
    assert (await kit.billing.balance(org)).plan_name == "enterprise"  # still, until period end
    await past(kit, first.period_end)
    sub = await kit.billing.subscription(org)
    assert (sub.plan, sub.pending_plan, sub.seats) == ("starter", None, 2)
    assert kit.charges(org)[-1].amount_cents == 9800  # 49.00 x 2, no proration, no refund
    bal = await kit.billing.balance(org)
    assert (bal.plan_name, bal.allocation) == ("starter", Decimal(3000))
    assert templates(kit, org).count("downgrade_scheduled") == 3


async def test_seats_more_now_prorated_fewer_at_renewal(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL)
    await period_fraction(kit, org, 0.5)
    sub = await kit.billing.change_seats(org, seats=5)
    assert sub.seats == 5
    added = kit.charges(org)[-1]
    assert added.purpose == "seats" and abs(added.amount_cents - 9000) <= 1  # 90.00 x 2 x ~1/2 (by seconds)
    sub = await kit.billing.change_seats(org, seats=2)
    assert (sub.seats, sub.pending_seats) == (5, 2)
    await past(kit, first.period_end)
    sub = await kit.billing.subscription(org)
    assert (sub.seats, sub.pending_seats) == (2, None)
    assert kit.charges(org)[-1].amount_cents == 18000
    await kit.settle()
    assert templates(kit, org).count("seats_changed") == 2


async def test_cancel_continues_to_period_end_then_free_and_resume_undoes_it(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="starter", seats=1, email=EMAIL)
    assert (await kit.billing.cancel(org)).cancel_at_period_end
    assert not (await kit.billing.resume(org)).cancel_at_period_end
    await past(kit, first.period_end)
    assert (await kit.billing.subscription(org)).status == "active"  # resumed: renewed
    second = await kit.billing.cancel(org)
    with pytest.raises(InvalidRequest, match="already cancelled"):
        await kit.billing.cancel(org)
    assert second.period_end is not None
    await past(kit, second.period_end)
    sub = await kit.billing.subscription(org)
    assert (sub.status, sub.plan, sub.period_end) == ("free", "free", None)
    assert len(kit.charges(org)) == 2  # no charge for the cancelled period
    bal = await kit.billing.balance(org)
    assert (bal.plan_name, bal.plan) == ("free", Decimal(50))
    assert templates(kit, org) == ["receipt", "cancellation_scheduled", "resumed", "receipt",
                                   "cancellation_scheduled", "reverted_to_free"]
    # Free again: a new subscription may start.
    again = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    assert again.status == "active" and kit.charges(org)[-1].amount_cents == 9000


async def test_annual_is_charged_once_at_20_percent_off_and_credits_come_monthly(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=2, interval="year", email=EMAIL)
    assert first.period_end is not None and first.period_start is not None
    assert (first.period_end - first.period_start).days in (365, 366)
    assert [c.amount_cents for c in kit.charges(org)] == [172800]  # 90.00 x 12 x 0.8 x 2
    await kit.billing.debit(org, action="insight", tier="pro", quantity=10, idempotency_key="k1")
    bal = await kit.billing.balance(org)
    assert bal.allocation == Decimal(10000) and bal.plan == Decimal(8500)
    for month in range(1, 3):
        await kit.advance(timedelta(days=31))
        bal = await kit.billing.balance(org)
        assert (bal.plan, bal.allocation) == (Decimal(10000), Decimal(10000)), month
    assert len(kit.charges(org)) == 1  # monthly credits, no monthly charge
    assert templates(kit, org) == ["receipt"]


async def test_dunning_retries_after_1_3_5_days_then_reverts_to_free(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.use_card(org, "declined")
    await past(kit, first.period_end)
    sub = await kit.billing.subscription(org)
    assert sub.status == "past_due"
    assert (await kit.billing.balance(org)).plan == Decimal(0)  # no new plan credits
    with pytest.raises(InvalidRequest, match="past due"):
        await kit.billing.upgrade(org, plan="enterprise")
    for day in (1, 3, 5):
        await past(kit, first.period_end, timedelta(days=day, minutes=2))
    sub = await kit.billing.subscription(org)
    assert (sub.status, sub.plan) == ("free", "free")
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "renewal", "retry", "retry", "retry"]
    assert [c.status for c in kit.charges(org)][1:] == ["declined"] * 4
    assert templates(kit, org) == ["receipt"] + ["payment_failed"] * 4 + ["reverted_to_free"]
    assert (await kit.billing.balance(org)).plan_name == "free"


async def test_a_retry_that_succeeds_restores_active_with_the_anchor_unchanged(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=1, email=EMAIL)
    await kit.use_card(org, "declined")
    await past(kit, first.period_end)
    assert (await kit.billing.subscription(org)).status == "past_due"
    await kit.use_card(org, "ok")
    await past(kit, first.period_end, timedelta(days=1, minutes=2))
    sub = await kit.billing.subscription(org)
    assert (sub.status, sub.period_start) == ("active", first.period_end)  # anchor unchanged
    assert (await kit.billing.balance(org)).plan == Decimal(10000)
    assert templates(kit, org) == ["receipt", "payment_failed", "receipt"]


async def test_trial_gives_credits_without_charge_warns_3_days_before_then_charges(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=2, trial_days=14, email=EMAIL)
    assert sub.status == "trialing" and sub.trial_end is not None
    assert kit.charges(org) == []
    assert (await kit.billing.balance(org)).plan == Decimal(10000)
    await past(kit, sub.trial_end, timedelta(days=-3, minutes=1))
    assert templates(kit, org) == ["trial_started", "trial_ending"]
    assert kit.emails(org)[-1].subject == "Your trial ends in 3 days"
    await kit.advance(timedelta(days=3))
    after = await kit.billing.subscription(org)
    assert (after.status, after.period_start) == ("active", sub.trial_end)
    assert [(c.amount_cents, c.purpose) for c in kit.charges(org)] == [(18000, "subscription")]


async def test_trial_end_without_a_payment_method_goes_to_free(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="starter", seats=1, trial_days=7, email=EMAIL)
    await kit.use_card(org, "none")
    assert sub.trial_end is not None
    await past(kit, sub.trial_end)
    after = await kit.billing.subscription(org)
    assert (after.status, after.plan) == ("free", "free")
    assert [c.status for c in kit.charges(org)] == []  # nothing to charge: no card
    assert templates(kit, org)[-1] == "reverted_to_free"


async def test_subscribe_with_a_declined_card_raises_and_stays_free(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="starter", seats=1, trial_days=3, email=EMAIL)  # creates the customer
    other = org + "-b"
    await kit.billing.subscribe(other, plan="starter", seats=1, trial_days=3, email=EMAIL)
    await kit.billing.cancel(other)
    sub = await kit.billing.subscription(other)
    assert sub.trial_end is not None
    await past(kit, sub.trial_end)
    await kit.use_card(other, "declined")
    with pytest.raises(PaymentDeclined):
        await kit.billing.subscribe(other, plan="pro", seats=1, email=EMAIL)
    assert (await kit.billing.subscription(other)).status == "free"


async def test_plan_credit_alerts_are_emailed_once_per_period(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="starter", seats=1, email=EMAIL)
    await kit.billing.debit(org, action="insight", tier="smart", quantity=48, idempotency_key="a")  # 2,400 = 80%
    await kit.billing.debit(org, action="insight", tier="smart", quantity=1, idempotency_key="b")
    await kit.settle()
    await kit.settle()
    assert templates(kit, org) == ["receipt", "usage_80"]
    await kit.billing.debit(org, action="insight", tier="smart", quantity=11, idempotency_key="c")  # 3,000 used
    await kit.settle()
    assert templates(kit, org)[-1] == "credits_exhausted"
    await past(kit, first.period_end)
    await kit.billing.debit(org, action="insight", tier="smart", quantity=48, idempotency_key="d")  # new period
    await kit.settle()
    assert templates(kit, org)[2:] == ["credits_exhausted", "receipt", "usage_80"]


async def test_vat_is_added_to_every_charge_and_invoiced(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="pro", seats=3, email=EMAIL, vat_rate=Decimal("0.20"))
    await past(kit, first.period_end)
    assert [c.amount_cents for c in kit.charges(org)] == [32400, 32400]  # 270.00 + 20% VAT
    invoices = await kit.billing.invoices(org)
    assert [(i.subtotal_cents, i.tax_cents, i.total_cents) for i in invoices] == [(27000, 5400, 32400)] * 2
    # INV-YYYY-NNNNNN: numbered per year (the kit's clock may have crossed into the next one)
    first_no, second_no = (tuple(int(part) for part in i.number.split("-")[1:]) for i in invoices)
    assert second_no > first_no
    assert "EUR 324.00" in invoices[0].html and invoices[0].stripe_payment_id in invoices[0].html


async def test_a_card_that_requires_authentication_fails_off_session_renewal(kit: TestKit, org: str) -> None:
    first = await kit.billing.subscribe(org, plan="starter", seats=1, email=EMAIL)
    await kit.use_card(org, "requires_authentication")
    await past(kit, first.period_end)
    assert (await kit.billing.subscription(org)).status == "past_due"
    assert kit.emails(org)[-1].subject == "Payment failed"
