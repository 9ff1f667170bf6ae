"""Payments against the session's PostgreSQL and a real localstripe process: no mocks.

Invoice numbers are per year and the database is shared by the whole session, so tests that assert
numbers take a year nobody used yet (`fresh_year`); the autouse invariant check (B1, B2) runs after each.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments import PaymentActivities
from models.billing_types import ChargeRequest, EnsureCustomer, InvoiceLine, Purpose
from models.errors import InvalidRequest
from payments import Payments, close_stripe_client, stripe_client
from payments.base import LOCK_PAYMENT, LOCK_WAIT_SECONDS
from payments.stripe_client import stripe_idempotency_key
from stack.stripe_server import CARD_DECLINED_AT_ATTACH, start_localstripe
from testkit.payments import KitPayments, SimulatedCrash
from tests.support.stripe_fixtures import localstripe_url, payments

__all__ = ["localstripe_url", "payments"]  # the session fixtures, used by name below

D = Decimal
PRO_3 = [InvoiceLine("pro x 3 seats, 2026-01-15 to 2026-02-15", 3, 9000, 27000)]
VAT_20 = D("0.20")
_years = itertools.count()


async def fresh_year(url: str) -> int:
    """A year no invoice was numbered in yet (far in the future: other tests number the present)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT greatest(coalesce(max(year), 0), 5000) FROM invoice_counters")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]) + 1 + next(_years)


def at(year: int, month: int = 1, day: int = 15) -> datetime:
    return datetime(year, month, day, 12, 0, tzinfo=UTC)


async def new_customer(pay: Payments, now: datetime, **kwargs: Any) -> str:
    org = f"pay-{uuid.uuid4().hex[:12]}"
    await pay.ensure_customer(EnsureCustomer(org, f"{org}@example.com", now, **kwargs))
    return org


def charge_req(org: str, now: datetime, *, key: str | None = None, lines: list[InvoiceLine] = PRO_3,
               vat: Decimal = VAT_20, purpose: Purpose = "renewal") -> ChargeRequest:
    return ChargeRequest(org, key or f"{org}:{now.isoformat()}:{purpose}", purpose, lines, now, vat)


async def payment_rows(url: str, org: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT key, status, amount_cents, stripe_payment_intent, decline_code FROM payments "
            "WHERE org_id = %s ORDER BY key", (org,))
        return await cur.fetchall()


async def declined_code(call: Any) -> str:
    with pytest.raises(ApplicationError) as info:
        await call
    err = info.value
    assert (err.type, err.non_retryable) == ("PaymentDeclined", True), err
    return str(err.details[0]["decline_code"])  # the error's fields (models/errors.py)


# -- charges and invoices -------------------------------------------------------------------------------


async def test_a_charge_is_one_succeeded_payment_and_one_invoice_with_exact_totals(
    payments: KitPayments, database_url: str
) -> None:
    year = await fresh_year(database_url)
    now = at(year)
    org = await new_customer(payments, now)
    result = await payments.charge(charge_req(org, now))

    assert (result.amount_cents, result.currency, result.replayed) == (32400, "EUR", False)
    assert result.invoice_number == f"INV-{year}-000001"
    assert result.payment_intent.startswith("pi_")
    assert await payments.stripe_payment_intents(org) == [result.payment_intent]
    assert await payment_rows(database_url, org) == [
        (f"{org}:{now.isoformat()}:renewal", "succeeded", 32400, result.payment_intent, None)]

    [charge] = await payments.charges(org)
    assert (charge.amount_cents, charge.currency, charge.purpose, charge.status) == (32400, "EUR", "renewal",
                                                                                      "succeeded")
    [inv] = await payments.invoices(org)
    assert (inv.number, inv.org_id, inv.issued_at, inv.currency) == (result.invoice_number, org, now, "EUR")
    assert (inv.subtotal_cents, inv.tax_rate, inv.tax_cents, inv.total_cents) == (27000, D("0.20"), 5400, 32400)
    assert inv.lines == PRO_3
    assert inv.stripe_payment_id == result.payment_intent
    for text in (inv.number, f"{year}-01-15", org, "pro x 3 seats", "EUR 90.00", "EUR 270.00", "Tax (20%)",
                 "EUR 54.00", "EUR 324.00", result.payment_intent, f"{org}@example.com"):
        assert text in inv.html, text


async def test_the_invoice_escapes_what_it_renders(payments: KitPayments, database_url: str) -> None:
    now = at(await fresh_year(database_url))
    org = await new_customer(payments, now)
    lines = [InvoiceLine("<script>alert(1)</script> & co", 1, 1999, 1999)]
    await payments.charge(charge_req(org, now, lines=lines, vat=D(0)))
    [inv] = await payments.invoices(org)
    assert "<script>" not in inv.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in inv.html
    assert (inv.tax_cents, inv.total_cents) == (0, 1999)
    assert "Tax (0%)" in inv.html


async def test_the_same_key_twice_charges_once_and_replays_the_first_result(payments: KitPayments) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    first = await payments.charge(charge_req(org, now))
    again = await payments.charge(charge_req(org, now, vat=D("0.2")))  # the same rate, written differently
    assert again.replayed and not first.replayed
    assert (again.payment_intent, again.invoice_number, again.amount_cents) == (
        first.payment_intent, first.invoice_number, first.amount_cents)
    assert len(await payments.stripe_payment_intents(org)) == 1
    assert len(await payments.invoices(org)) == 1


async def test_concurrent_duplicates_charge_once(payments: KitPayments) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    results = await asyncio.gather(*(payments.charge(charge_req(org, now)) for _ in range(5)))
    assert len({r.payment_intent for r in results}) == 1
    assert len({r.invoice_number for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]
    assert len(await payments.stripe_payment_intents(org)) == 1


async def test_a_network_error_before_stripe_then_concurrent_retries_charge_once(
    payments: KitPayments, database_url: str
) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    req = charge_req(org, now)
    with socket.socket() as s:  # a port nobody listens on: Stripe unreachable
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = stripe_client(base_url=dead)
    cut_off = Payments(database_url, client, pool_size=1)
    try:
        with pytest.raises(stripe.APIConnectionError):  # retryable: Temporal will try again
            await cut_off.charge(req)
    finally:
        await cut_off.close()
        await close_stripe_client(client)
    assert [c.status for c in await payments.charges(org)] == ["pending"]
    # The retries (say a timed-out attempt and its retry) all find the row pending and look for an
    # intent first; one at a time, so exactly one creates it.
    results = await asyncio.gather(*(payments.charge(req) for _ in range(5)))
    assert len({r.payment_intent for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]
    assert len(await payments.stripe_payment_intents(org)) == 1
    assert [c.status for c in await payments.charges(org)] == ["succeeded"]


@pytest.mark.parametrize("change", ["lines", "vat", "purpose"])
async def test_the_same_key_with_other_content_is_a_conflict_and_changes_nothing(
    payments: KitPayments, database_url: str, change: str
) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    key = f"{org}:conflict"
    first = await payments.charge(charge_req(org, now, key=key))
    other = {
        "lines": charge_req(org, now, key=key, lines=[InvoiceLine("pro x 4 seats", 4, 9000, 36000)]),
        "vat": charge_req(org, now, key=key, vat=D("0.10")),
        "purpose": charge_req(org, now, key=key, purpose="upgrade"),
    }[change]
    with pytest.raises(ApplicationError) as info:
        await PaymentActivities(payments).charge(other)
    assert (info.value.type, info.value.non_retryable) == ("IdempotencyConflict", True)
    assert await payment_rows(database_url, org) == [(key, "succeeded", 32400, first.payment_intent, None)]
    assert len(await payments.stripe_payment_intents(org)) == 1


async def test_a_crash_after_stripe_charged_then_a_retry_charges_once(
    payments: KitPayments, database_url: str
) -> None:
    now = at(await fresh_year(database_url))
    org = await new_customer(payments, now)
    req = charge_req(org, now)
    payments.crash_after_stripe.add(req.key)
    with pytest.raises(SimulatedCrash):
        await payments.charge(req)
    assert req.key not in payments.crash_after_stripe
    [pi] = await payments.stripe_payment_intents(org)  # Stripe charged...
    assert await payment_rows(database_url, org) == [(req.key, "pending", 32400, None, None)]  # ...we wrote nothing
    assert await payments.invoices(org) == []

    retry = await payments.charge(req)  # the activity's retry: finds the PaymentIntent, creates none
    assert (retry.payment_intent, retry.replayed) == (pi, True)
    assert await payments.stripe_payment_intents(org) == [pi]
    assert await payment_rows(database_url, org) == [(req.key, "succeeded", 32400, pi, None)]
    [inv] = await payments.invoices(org)
    assert (inv.number, inv.stripe_payment_id, inv.total_cents) == (retry.invoice_number, pi, 32400)
    assert inv.number.endswith("-000001")

    again = await payments.charge(req)
    assert (again.payment_intent, again.invoice_number, again.replayed) == (pi, inv.number, True)


async def test_a_retry_on_another_worker_after_a_crash_charges_once(
    payments: KitPayments, database_url: str, localstripe_url: str
) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    req = charge_req(org, now)
    payments.crash_after_stripe.add(req.key)
    with pytest.raises(SimulatedCrash):
        await payments.charge(req)
    client = stripe_client(base_url=localstripe_url)
    other = Payments(database_url, client, pool_size=1)
    try:
        retry = await other.charge(req)
    finally:
        await other.close()
        await close_stripe_client(client)
    assert await payments.stripe_payment_intents(org) == [retry.payment_intent]
    assert [c.status for c in await payments.charges(org)] == ["succeeded"]


async def test_a_declined_card_is_a_non_retryable_decline_recorded_once(
    payments: KitPayments, database_url: str
) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    await payments.set_card(org, "declined")
    req = charge_req(org, now)
    assert await declined_code(PaymentActivities(payments).charge(req)) == "card_declined"
    [(key, status, amount, _, code)] = await payment_rows(database_url, org)
    assert (key, status, amount, code) == (req.key, "declined", 32400, "card_declined")
    assert await payments.invoices(org) == []
    assert len(await payments.stripe_payment_intents(org)) == 1
    # The same key again: declined again, without a second attempt at Stripe.
    assert await declined_code(PaymentActivities(payments).charge(req)) == "card_declined"
    assert len(await payments.stripe_payment_intents(org)) == 1
    # A new card and a new key charge.
    await payments.set_card(org, "ok")
    ok = await payments.charge(charge_req(org, now, key=f"{org}:retry-1", purpose="retry"))
    assert [c.status for c in await payments.charges(org)] == ["declined", "succeeded"]
    assert [i.stripe_payment_id for i in await payments.invoices(org)] == [ok.payment_intent]


async def test_a_card_that_requires_authentication_is_declined_and_its_intent_canceled(
    payments: KitPayments, database_url: str
) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    await payments.set_card(org, "requires_authentication")
    assert await declined_code(PaymentActivities(payments).charge(charge_req(org, now))) == "authentication_required"
    [(_, status, _, pi, code)] = await payment_rows(database_url, org)
    assert (status, code) == ("declined", "authentication_required")
    intent = await payments.stripe.v1.payment_intents.retrieve_async(pi)
    assert intent.status == "canceled"
    assert await payments.invoices(org) == []


async def test_no_payment_method_is_a_decline_that_attempts_and_records_nothing(payments: KitPayments) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    assert await payments.set_card(org, "none") is None
    req = charge_req(org, now)
    assert await declined_code(PaymentActivities(payments).charge(req)) == "no_payment_method"
    assert await payments.charges(org) == []
    assert await payments.stripe_payment_intents(org) == []
    # Nothing was attempted, so the same key charges once there is a card.
    await payments.set_card(org, "ok")
    assert not (await payments.charge(req)).replayed
    assert [c.status for c in await payments.charges(org)] == ["succeeded"]


async def test_a_charge_without_a_billing_profile_is_a_no_payment_method_decline(payments: KitPayments) -> None:
    org = f"pay-nobody-{uuid.uuid4().hex[:8]}"
    assert await declined_code(PaymentActivities(payments).charge(charge_req(org, at(2031)))) == "no_payment_method"
    assert await payments.charges(org) == []


async def test_bad_charges_are_refused_and_write_nothing(payments: KitPayments, database_url: str) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    bad = [
        charge_req(org, now, lines=[]),
        charge_req(org, now, lines=[InvoiceLine("free", 1, 0, 0)]),
        charge_req(org, now, vat=D("1.5")),
        charge_req(org, now, key="has spaces in it"),
        ChargeRequest(org, f"{org}:naive", "renewal", PRO_3, datetime(2031, 1, 1)),
    ]
    for req in bad:
        with pytest.raises(ApplicationError) as info:
            await PaymentActivities(payments).charge(req)
        assert (info.value.type, info.value.non_retryable) == ("InvalidRequest", True), req
    assert await payment_rows(database_url, org) == []


# -- invoice numbering --------------------------------------------------------------------------------------


async def test_invoice_numbers_are_gapless_under_20_concurrent_charges(
    payments: KitPayments, database_url: str
) -> None:
    year = await fresh_year(database_url)
    now = at(year, 6, 1)
    orgs = await asyncio.gather(*(new_customer(payments, now) for _ in range(20)))
    results = await asyncio.gather(*(payments.charge(charge_req(org, now)) for org in orgs))
    assert sorted(r.invoice_number for r in results) == [f"INV-{year}-{n:06d}" for n in range(1, 21)]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT last FROM invoice_counters WHERE year = %s", (year,))
        assert await cur.fetchone() == (20,)


async def test_each_year_numbers_from_000001(payments: KitPayments, database_url: str) -> None:
    y1 = await fresh_year(database_url)
    y2 = y1 + 1
    org = await new_customer(payments, at(y1))
    numbers = [
        (await payments.charge(charge_req(org, when, key=f"{org}:{when.isoformat()}"))).invoice_number
        for when in (at(y1, 3), at(y1, 12, 31), at(y2, 1, 1), at(y2, 2))
    ]
    assert numbers == [f"INV-{y1}-000001", f"INV-{y1}-000002", f"INV-{y2}-000001", f"INV-{y2}-000002"]
    assert [i.number for i in await payments.invoices(org)] == numbers


async def test_a_declined_charge_takes_no_invoice_number(payments: KitPayments, database_url: str) -> None:
    year = await fresh_year(database_url)
    ok, bad = await new_customer(payments, at(year)), await new_customer(payments, at(year))
    await payments.set_card(bad, "declined")
    first = await payments.charge(charge_req(ok, at(year, 2)))
    await declined_code(PaymentActivities(payments).charge(charge_req(bad, at(year, 3))))
    second = await payments.charge(charge_req(ok, at(year, 4)))
    assert (first.invoice_number, second.invoice_number) == (f"INV-{year}-000001", f"INV-{year}-000002")


# -- customers ----------------------------------------------------------------------------------------------


async def test_ensure_customer_creates_one_customer_with_the_default_card(payments: KitPayments) -> None:
    now = at(2031)
    org = f"pay-{uuid.uuid4().hex[:12]}"
    req = EnsureCustomer(org, f"{org}@example.com", now, vat_rate=D("0.21"))
    first = await payments.ensure_customer(req)
    again = await payments.ensure_customer(req)
    assert first == again
    assert first.customer_id.startswith("cus_") and first.payment_method is not None
    found = await payments.stripe.v1.customers.list_async(params={"email": f"{org}@example.com"})
    assert [c.id for c in found.data] == [first.customer_id]
    customer = await payments.stripe.v1.customers.retrieve_async(first.customer_id)
    assert customer.invoice_settings is not None
    assert customer.invoice_settings.default_payment_method == first.payment_method


async def test_ensure_customer_after_a_crash_finds_the_customer_instead_of_creating_another(
    payments: KitPayments,
) -> None:
    org = f"pay-{uuid.uuid4().hex[:12]}"
    email = f"{org}@example.com"
    # An earlier attempt created the customer at Stripe, then died before recording it.
    earlier = await payments.stripe.v1.customers.create_async(params={"email": email, "metadata": {"org_id": org}})
    result = await payments.ensure_customer(EnsureCustomer(org, email, at(2031)))
    assert result.customer_id == earlier.id
    found = await payments.stripe.v1.customers.list_async(params={"email": email})
    assert [c.id for c in found.data] == [earlier.id]


async def test_ensure_customer_attaches_the_given_payment_method_as_default(payments: KitPayments) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    pm = await payments.create_card("4242424242424242")
    result = await payments.ensure_customer(EnsureCustomer(org, f"{org}@example.com", now, payment_method=pm))
    assert result.payment_method == pm
    charged = await payments.charge(charge_req(org, now))
    intent = await payments.stripe.v1.payment_intents.retrieve_async(charged.payment_intent)
    assert intent.payment_method == pm


async def test_a_card_declined_at_attach_is_a_non_retryable_decline(payments: KitPayments) -> None:
    now = at(2031)
    org = f"pay-{uuid.uuid4().hex[:12]}"
    pm = await payments.create_card(CARD_DECLINED_AT_ATTACH)
    req = EnsureCustomer(org, f"{org}@example.com", now, payment_method=pm)
    assert await declined_code(PaymentActivities(payments).ensure_customer(req)) == "card_declined"
    # The customer exists without a card: a charge is a no_payment_method decline.
    assert await declined_code(PaymentActivities(payments).charge(charge_req(org, now))) == "no_payment_method"


async def test_an_unknown_payment_method_is_refused_for_good(payments: KitPayments) -> None:
    now = at(2031)
    org = await new_customer(payments, now)
    with pytest.raises(ApplicationError) as info:
        await PaymentActivities(payments).ensure_customer(
            EnsureCustomer(org, f"{org}@example.com", now, payment_method="pm_nope"))
    assert (info.value.type, info.value.non_retryable) == ("InvalidRequest", True)
    assert (await payments.charge(charge_req(org, now))).amount_cents == 32400  # the default card stays


async def test_set_card_needs_a_billing_profile(payments: KitPayments) -> None:
    with pytest.raises(InvalidRequest, match="no billing profile"):
        await payments.set_card(f"pay-nobody-{uuid.uuid4().hex[:8]}", "ok")
    with pytest.raises(InvalidRequest, match="card kind"):
        await payments.set_card("whoever", "gold")  # type: ignore[arg-type]


# -- the Temporal activities ---------------------------------------------------------------------------------


async def test_the_activities_charge_and_decline(payments: KitPayments) -> None:
    acts = PaymentActivities(payments)
    env = ActivityEnvironment()
    now = at(2031)
    org = f"pay-{uuid.uuid4().hex[:12]}"
    customer = await env.run(acts.ensure_customer, EnsureCustomer(org, f"{org}@example.com", now))
    assert customer.payment_method is not None
    result = await env.run(acts.charge, charge_req(org, now))
    assert result.amount_cents == 32400
    await payments.set_card(org, "declined")
    assert await declined_code(env.run(acts.charge, charge_req(org, now, key=f"{org}:2"))) == "card_declined"
    names = [activity._Definition.must_from_callable(a).name for a in acts.all()]  # type: ignore[arg-type]
    assert names == ["stripe.ensure_customer", "stripe.charge", "invoices.issue", "invoices.step"]


# -- the fake Stripe --------------------------------------------------------------------------------------------


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


async def test_localstripe_keeps_its_store_in_memory_or_in_the_state_file(tmp_path: Path) -> None:
    shared = Path("/tmp/localstripe.pickle")  # where localstripe as shipped pickles its store
    before = _mtime(shared)
    state = tmp_path / "stripe.pickle"
    async with start_localstripe(state_file=state) as url:
        client = stripe_client(base_url=url)
        try:
            cus = await client.v1.customers.create_async(params={"email": "keep@example.com"})
        finally:
            await close_stripe_client(client)
    assert _mtime(shared) == before
    assert _mtime(state) is not None
    async with start_localstripe(state_file=state) as url:
        client = stripe_client(base_url=url)
        try:
            again = await client.v1.customers.retrieve_async(cus.id)
        finally:
            await close_stripe_client(client)
    assert again.email == "keep@example.com"
    async with start_localstripe() as url:  # no state file: empty
        client = stripe_client(base_url=url)
        try:
            assert (await client.v1.customers.list_async()).data == []
        finally:
            await close_stripe_client(client)
    assert _mtime(state.with_suffix(".pickle.tmp")) is None


def test_long_business_keys_become_a_stable_digest_within_stripes_255_characters() -> None:
    short = "acme:2026-01-15T12:00:00Z:renewal"
    assert stripe_idempotency_key(short) == short
    long_key = "o" * 200 + ":pack:" + "k" * 200
    digest = stripe_idempotency_key(long_key)
    assert len(digest) <= 255 and digest == stripe_idempotency_key(long_key)
    assert digest != stripe_idempotency_key(long_key[:-1] + "j")


async def test_a_key_held_by_another_attempt_past_the_deadline_is_a_retryable_service_unavailable(
        payments: KitPayments, database_url: str) -> None:
    now = at(2032)
    org = await new_customer(payments, now)
    req = charge_req(org, now)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:  # stuck attempt
        await other.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_PAYMENT, req.key))
        payments.lock_wait_seconds = 0.3
        try:
            started = time.monotonic()
            with pytest.raises(ApplicationError) as info:
                await PaymentActivities(payments).charge(req)
            assert (info.value.type, info.value.non_retryable) == ("ServiceUnavailable", False)  # Temporal retries
            assert time.monotonic() - started < 5
            assert await payment_rows(database_url, org) == []  # nothing written, nothing charged
        finally:
            payments.lock_wait_seconds = LOCK_WAIT_SECONDS
    assert not (await payments.charge(req)).replayed  # the lock released: the retry charges, once
    assert len(await payments.stripe_payment_intents(org)) == 1
