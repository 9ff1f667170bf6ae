"""Open invoices (payments/open_invoices.py, invoice payment terms) against the session's PostgreSQL and a real
localstripe: issued once per key, whatever is repeated or raced; no card charged; paid once by an operator or by
card (through a race and a crash after Stripe charged); each step at most once; bad input refused with nothing
written."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from models.billing_types import InvoiceLine, IssueInvoice, MarkInvoice
from models.errors import IdempotencyConflict, InvalidRequest, PaymentDeclined, UnknownInvoice
from testkit.payments import KitPayments, SimulatedCrash
from tests.payments.test_payments import at, charge_req, fresh_year, new_customer, payment_rows
from tests.support.stripe_fixtures import localstripe_url, payments

__all__ = ["localstripe_url", "payments"]  # the session fixtures, used by name below


async def test_issued_once_even_raced_and_no_card_charged(payments: KitPayments) -> None:
    now = at(await fresh_year(payments.pool.url))
    org = await new_customer(payments, now)
    req = IssueInvoice(charge_req(org, now), now + timedelta(days=7))
    first, *others = await asyncio.gather(*(payments.issue_invoice(req) for _ in range(5)))
    assert (first.amount_cents, first.payment_intent) == (32400, "")  # 3 x 90.00 + 20% VAT
    assert {o.invoice_number for o in others} == {first.invoice_number}
    assert sorted(r.replayed for r in (first, *others)) == [False, True, True, True, True]
    assert [(k, s, a, pi) for k, s, a, pi, _ in await payment_rows(payments.pool.url, org)] == [
        (req.charge.key, "invoiced", 32400, None)]
    assert await payments.stripe_payment_intents(org) == []  # Stripe never heard of it
    [invoice] = await payments.invoices(org)
    assert (invoice.status, invoice.due_at, invoice.stripe_payment_id) == ("open", now + timedelta(days=7), "")
    # The same key with other lines: a conflict, nothing changed.
    other = IssueInvoice(charge_req(org, now, key=req.charge.key,
                                    lines=[InvoiceLine("pro x 4 seats", 4, 9000, 36000)]), req.due_at)
    with pytest.raises(IdempotencyConflict):
        await payments.issue_invoice(other)
    assert len(await payments.invoices(org)) == 1


async def test_paid_once_by_an_operator_and_each_step_at_most_once(payments: KitPayments) -> None:
    now = at(await fresh_year(payments.pool.url))
    org = await new_customer(payments, now)
    req = IssueInvoice(charge_req(org, now), now + timedelta(days=7))
    issued = await payments.issue_invoice(req)
    due = await payments.mark_invoice(MarkInvoice(org, req.charge.key, "due", now + timedelta(days=7)))
    again = await payments.mark_invoice(MarkInvoice(org, req.charge.key, "due", now + timedelta(days=8)))
    assert due == again and due.status == "open"
    paid_at = now + timedelta(days=8)
    both = await asyncio.gather(*(payments.mark_paid(org, issued.invoice_number, now=paid_at + timedelta(hours=i),
                                                     reference=f"transfer {i}") for i in range(3)))
    assert {(p.status, p.paid_at) for p in both} == {("paid", both[0].paid_at)}  # one of them paid it
    assert [s for _, s, *_ in await payment_rows(payments.pool.url, org)] == ["succeeded"]
    # Paid: the dunning steps record nothing more.
    overdue = await payments.mark_invoice(MarkInvoice(org, req.charge.key, "overdue", now + timedelta(days=9)))
    assert overdue.status == "paid"
    [invoice] = await payments.invoices(org)
    assert invoice.overdue_at is None
    # The invoice is issued again as the first answer, paid: a re-run renewal step never issues a second one.
    assert (await payments.issue_invoice(req)).invoice_number == issued.invoice_number


async def test_refusals_write_nothing(payments: KitPayments) -> None:
    now = at(await fresh_year(payments.pool.url))
    org = await new_customer(payments, now)
    with pytest.raises(InvalidRequest, match="before it is issued"):
        await payments.issue_invoice(IssueInvoice(charge_req(org, now), now - timedelta(days=1)))
    with pytest.raises(InvalidRequest, match="nothing to charge"):
        await payments.issue_invoice(IssueInvoice(charge_req(org, now, lines=[InvoiceLine("free", 1, 0, 0)]),
                                                  now + timedelta(days=7)))
    assert await payment_rows(payments.pool.url, org) == []
    with pytest.raises(UnknownInvoice):
        await payments.mark_paid(org, "INV-2099-000001", now=now)
    with pytest.raises(InvalidRequest, match="reference"):
        await payments.mark_paid(org, "INV-2099-000001", now=now, reference="x" * 201)
    with pytest.raises(InvalidRequest, match="'check', 'due' or 'overdue'"):
        await payments.mark_invoice(MarkInvoice(org, f"{org}:k", "paid", now))  # type: ignore[arg-type]


async def test_paid_by_card_once_through_a_race_and_a_crash_after_stripe(payments: KitPayments) -> None:
    now = at(await fresh_year(payments.pool.url))
    org = await new_customer(payments, now)
    req = IssueInvoice(charge_req(org, now), now + timedelta(days=7))
    issued = await payments.issue_invoice(req)
    payments.crash_after_stripe.add(f"{req.charge.key}:pay:a1")  # Stripe charges, the process dies before recording
    with pytest.raises(SimulatedCrash):
        await payments.pay_invoice(org, issued.invoice_number, idempotency_key="a1", now=now + timedelta(days=2))
    assert [s for _, s, *_ in await payment_rows(payments.pool.url, org)] == ["invoiced"]
    paid = await asyncio.gather(*(payments.pay_invoice(org, issued.invoice_number, idempotency_key="a1",
                                                       now=now + timedelta(days=3)) for _ in range(3)))
    assert {p.status for p in paid} == {"paid"}
    [pi] = await payments.stripe_payment_intents(org)  # the crashed attempt's, found again: one charge in all
    assert [(s, a, p) for _, s, a, p, _ in await payment_rows(payments.pool.url, org)] == [("succeeded", 32400, pi)]
    [invoice] = await payments.invoices(org)
    assert (invoice.status, invoice.stripe_payment_id) == ("paid", pi)
    # Paid: another attempt, or a transfer recorded, changes nothing and charges nothing.
    again = await payments.pay_invoice(org, issued.invoice_number, idempotency_key="a2", now=now + timedelta(days=4))
    assert again.paid_at == invoice.paid_at
    assert (await payments.mark_paid(org, issued.invoice_number, now=now + timedelta(days=5))).paid_at == \
        invoice.paid_at
    assert len(await payments.stripe_payment_intents(org)) == 1


async def test_a_declined_card_leaves_the_invoice_open_and_another_attempt_may_pay(payments: KitPayments) -> None:
    now = at(await fresh_year(payments.pool.url))
    org = await new_customer(payments, now)
    issued = await payments.issue_invoice(IssueInvoice(charge_req(org, now), now + timedelta(days=7)))
    await payments.set_card(org, "declined")
    with pytest.raises(PaymentDeclined):
        await payments.pay_invoice(org, issued.invoice_number, idempotency_key="first", now=now)
    [invoice] = await payments.invoices(org)
    assert invoice.status == "open"
    assert [s for _, s, *_ in await payment_rows(payments.pool.url, org)] == ["invoiced"]
    await payments.set_card(org, "ok")
    with pytest.raises(PaymentDeclined):  # that attempt was declined: its key answers so again
        await payments.pay_invoice(org, issued.invoice_number, idempotency_key="first", now=now)
    assert (await payments.pay_invoice(org, issued.invoice_number, idempotency_key="second", now=now)).status == "paid"
    with pytest.raises(UnknownInvoice):
        await payments.pay_invoice(org, "INV-2099-000001", idempotency_key="third", now=now)
