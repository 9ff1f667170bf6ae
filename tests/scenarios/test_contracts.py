"""Contracts through the test kit (DESIGN.md section 10, seed 001's annual Enterprise contract): the allowance,
the open-hold limit, overage up to its cap and invoiced once at the next renewal whatever is retried, the
contract's seat price, and its term's end. Exact amounts throughout."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from models.contract_types import ContractTerms
from models.errors import ConcurrencyLimitExceeded, InsufficientCredits, InvalidRequest
from testkit import TestKit
from tests.support.keys import stamp

EMAIL = "finance@cloro.test"


def seed_001(kit: TestKit, **change: object) -> ContractTerms:
    """+20% credits a month at the same fee, 1.3x concurrency, overage at 0.4 cents a credit, for a year."""
    now = kit.now()
    terms = ContractTerms(now - timedelta(days=1), now + timedelta(days=365), allowance_multiplier=Decimal("1.2"),
                          concurrency_multiplier=Decimal("1.3"), overage_allowed=True,
                          overage_rate_cents=Decimal("0.4"))
    return replace(terms, **change)  # type: ignore[arg-type]


async def use(kit: TestKit, org: str, credits: int, key: str) -> None:
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=credits, idempotency_key=key)


async def test_plus_20_percent_is_48000_credits_a_month_and_1_3x_is_130_holds(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="enterprise", email=EMAIL)
    await use(kit, org, 1000, "before")
    changed = await kit.billing.set_contract(org, seed_001(kit))
    assert changed.contract is not None and changed.contract.allowance_multiplier == Decimal("1.2")
    bal = await kit.billing.balance(org)
    # In force at once: the new allocation less what was consumed, as an upgrade does.
    assert (bal.allocation, bal.plan, bal.concurrency_limit) == (Decimal(48000), Decimal(47000), 130)
    for i in range(130):
        await kit.billing.open_hold(org, action="ai_chat", tier="fast", idempotency_key=f"h{i}")
    with pytest.raises(ConcurrencyLimitExceeded):
        await kit.billing.open_hold(org, action="ai_chat", tier="fast", idempotency_key="h130")
    for i in range(130):
        await kit.billing.release_hold(org, f"h{i}")
    # The next period: the contract's allocation again, and its limit (a renewal does not reset them).
    assert sub.period_end is not None
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    bal = await kit.billing.balance(org)
    assert (bal.allocation, bal.plan, bal.concurrency_limit) == (Decimal(48000), Decimal(48000), 130)
    [renewal] = [c for c in kit.charges(org) if c.purpose == "renewal"]
    assert renewal.amount_cents == 20000  # the same fee


async def test_overage_is_one_line_on_the_next_renewal_once_and_the_cap_refuses(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="enterprise", email=EMAIL)
    assert sub.period_end is not None
    await kit.billing.set_contract(org, seed_001(kit, overage_cap=Decimal(6000)))
    await use(kit, org, 48000, "allocation")
    await use(kit, org, 5000, "past-it")  # the balance is empty: all of it is overage
    bal = await kit.billing.balance(org)
    assert (bal.available, bal.overage, bal.overage_cap) == (Decimal(0), Decimal(5000), Decimal(6000))
    with pytest.raises(InsufficientCredits):
        await use(kit, org, 1001, "past-the-cap")  # 6,001 > 6,000: refused whole
    assert (await kit.billing.balance(org)).overage == Decimal(5000)
    await use(kit, org, 5000, "past-it")  # a replay charges nothing again
    assert (await kit.billing.balance(org)).overage == Decimal(5000)
    # The renewal's charge: refused by Stripe for good once (the step re-runs as an incident), then charged
    # with its answer lost once (retried in place): the overage is closed once, under the renewal's key.
    key = f"{org}:{stamp(sub.period_end)}:renewal"
    kit.payments.refuse_charges.add(key)
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
        assert "renewal failed" in ((await kit.billing.subscription(org)).incident or "")
    finally:
        kit.payments.refuse_charges.discard(key)
    kit.payments.crash_after_stripe.add(key)
    done = await kit.billing.retry_now(org)
    assert (done.renewals, done.incident) == (1, None)
    await kit.settle()
    renewals = [c for c in kit.charges(org) if c.purpose == "renewal"]
    assert [(c.amount_cents, c.status) for c in renewals] == [(22000, "succeeded")]  # 200.00 + 20.00
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    seats, overage = invoice.lines
    assert (seats.description.startswith("enterprise x 1 seats, "), seats.amount_cents) == (True, 20000)
    assert (overage.description, overage.amount_cents) == ("overage: 5,000 credits at 0.4 cents per credit", 2000)
    bal = await kit.billing.balance(org)
    assert (bal.overage, bal.available) == (Decimal(0), Decimal(48000))
    # The next renewal has no overage to invoice: no line.
    await kit.advance(timedelta(days=31))
    invoices = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    assert len(invoices) == 2 and len(invoices[1].lines) == 1 and invoices[1].total_cents == 20000


async def test_a_contract_seat_price_holds_for_its_term_then_the_catalog_s_applies(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", seats=2, email=EMAIL)
    assert sub.period_end is not None
    now = kit.now()
    # A term ending inside the second period: the first renewal is at the contract's price, the second not.
    terms = ContractTerms(now, sub.period_end + timedelta(days=10), seat_price_cents=7500)
    await kit.billing.set_contract(org, terms)
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    await kit.advance(timedelta(days=31))
    renewals = [c.amount_cents for c in kit.charges(org) if c.purpose == "renewal"]
    assert renewals == [15000, 18000]  # 2 x 75.00, then 2 x 90.00
    assert (await kit.billing.subscription(org)).contract is None  # its term is over


async def test_a_contract_is_refused_typed_and_changes_nothing(kit: TestKit, org: str) -> None:
    await kit.billing.open_wallet(org)
    with pytest.raises(InvalidRequest, match="subscription"):
        await kit.billing.set_contract(org, seed_001(kit))
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    with pytest.raises(InvalidRequest, match="not both"):
        await kit.billing.set_contract(org, seed_001(kit, allowance_credits=Decimal(5)))
    with pytest.raises(InvalidRequest, match="only with overage_allowed"):
        await kit.billing.set_contract(org, seed_001(kit, overage_allowed=False))
    sub = await kit.billing.subscription(org)
    bal = await kit.billing.balance(org)
    assert (sub.contract, bal.allocation, bal.concurrency_limit) == (None, Decimal(10000), 20)


async def test_ending_a_contract_gives_the_plan_back_and_still_invoices_its_overage(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    assert sub.period_end is not None
    await kit.billing.set_contract(org, seed_001(kit, allowance_multiplier=None, concurrency_multiplier=Decimal(1),
                                                 overage_rate_cents=Decimal("1.25")))
    await use(kit, org, 3000 + 401, "all-and-more")
    ended = await kit.billing.set_contract(org, None)
    assert ended.contract is None
    bal = await kit.billing.balance(org)
    assert (bal.overage, bal.overage_cap, bal.concurrency_limit) == (Decimal(401), None, 5)
    with pytest.raises(InsufficientCredits):
        await use(kit, org, 1, "no-more-overage")
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    # 401 x 1.25 = 501.25 cents: 5.01 on the line.
    assert [line.amount_cents for line in invoice.lines] == [4900, 501]
