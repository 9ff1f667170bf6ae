"""Invoice payment terms through the test kit (DESIGN.md section 10, seed 001's net-7 by bank transfer): a renewal
issues an open invoice with a due date instead of charging a card; it is paid when an operator marks it paid; an
unpaid one goes through dunning after its due date (reminders, then Free). Exact dates and amounts; the webhook
events written in the transaction of each step."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from models.billing_types import ChargeRequest, InvoiceLine, IssueInvoice
from models.contract_types import ContractTerms
from models.errors import InvalidRequest, UnknownInvoice
from testkit import TestKit

EMAIL = "finance@cloro.test"


def net(kit: TestKit, days: int) -> ContractTerms:
    now = kit.now()
    return ContractTerms(now - timedelta(days=1), now + timedelta(days=365), payment_terms="invoice", net_days=days)


def invoice_events(kit: TestKit, org: str) -> list[str]:
    with psycopg.connect(kit.database_url) as conn:
        rows = conn.execute("SELECT type FROM events WHERE org_id = %s AND type LIKE 'invoice.%%' ORDER BY seq",
                            (org,)).fetchall()
    return [t for (t,) in rows]


async def renewed_on_terms(kit: TestKit, org: str, days: int = 7) -> str:
    """Subscribe (the first period by card), set net-`days` invoice terms, renew: the renewal's invoice number."""
    sub = await kit.billing.subscribe(org, plan="enterprise", seats=2, email=EMAIL)
    assert sub.period_end is not None
    await kit.billing.set_contract(org, net(kit, days))
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    assert invoice.status == "open" and invoice.due_at == sub.period_end + timedelta(days=days)
    assert (invoice.total_cents, invoice.stripe_payment_id, invoice.paid_at) == (40000, "", None)
    return invoice.number


async def test_a_net_7_invoice_is_open_after_renewal_and_paid_when_marked(kit: TestKit, org: str) -> None:
    number = await renewed_on_terms(kit, org)
    # No card was charged for the renewal: its payment waits, invoiced; the period's credits are granted.
    assert [(c.purpose, c.status, c.amount_cents) for c in kit.charges(org)] == [
        ("subscription", "succeeded", 40000), ("renewal", "invoiced", 40000)]
    assert (await kit.billing.balance(org)).allocation == 40000
    issued = [m for m in kit.emails(org) if m.template == "invoice_issued"]
    assert len(issued) == 1 and number in issued[0].subject and "EUR 400.00" in issued[0].subject
    paid = await kit.billing.mark_invoice_paid(org, number, reference="transfer ref 4411")
    assert paid.status == "paid" and paid.paid_at is not None
    assert [(c.purpose, c.status) for c in kit.charges(org)] == [("subscription", "succeeded"),
                                                                 ("renewal", "succeeded")]
    again = await kit.billing.mark_invoice_paid(org, number)  # a repeat: as the first
    assert (again.status, again.paid_at) == ("paid", paid.paid_at)
    await kit.advance(timedelta(days=10))  # past its due date: no reminder, it is paid
    templates = [m.template for m in kit.emails(org)]
    assert "invoice_due" not in templates and "invoice_overdue" not in templates
    receipts = [m for m in kit.emails(org) if m.template == "receipt" and number in m.subject]
    assert len(receipts) == 1 and "we received EUR 400.00" in receipts[0].text
    assert invoice_events(kit, org) == ["invoice.issued", "invoice.issued", "invoice.paid"]
    assert (await kit.billing.subscription(org)).status == "active"


async def test_an_unpaid_invoice_goes_through_dunning_after_its_due_date(kit: TestKit, org: str) -> None:
    number = await renewed_on_terms(kit, org)
    [invoice] = [i for i in await kit.billing.invoices(org) if i.number == number]
    assert invoice.due_at is not None

    async def at(days: int) -> list[str]:
        await kit.advance(invoice.due_at + timedelta(days=days, minutes=1) - kit.now())  # type: ignore[operator]
        return [m.template for m in kit.emails(org) if m.template.startswith("invoice_") or
                m.template == "reverted_to_free"]

    assert await at(0) == ["invoice_issued", "invoice_due"]
    assert await at(1) == ["invoice_issued", "invoice_due", "invoice_overdue"]
    [overdue] = [i for i in await kit.billing.invoices(org) if i.number == number]
    assert overdue.overdue_at is not None and overdue.status == "open"
    assert (await kit.billing.subscription(org)).status == "active"  # service continues through dunning
    assert await at(3) == ["invoice_issued", "invoice_due", "invoice_overdue", "invoice_overdue"]
    final = [m for m in kit.emails(org) if m.template == "invoice_overdue"][-1]
    assert final.subject.startswith("Final notice")
    assert await at(5) == ["invoice_issued", "invoice_due", "invoice_overdue", "invoice_overdue", "reverted_to_free"]
    sub = await kit.billing.subscription(org)
    assert (sub.status, sub.plan, sub.contract) == ("free", "free", None)
    assert invoice_events(kit, org) == ["invoice.issued", "invoice.issued", "invoice.due", "invoice.overdue"]
    # The debt stays on the books: the invoice is still open and can still be marked paid.
    assert (await kit.billing.mark_invoice_paid(org, number)).status == "paid"


async def test_paid_during_dunning_stops_it(kit: TestKit, org: str) -> None:
    number = await renewed_on_terms(kit, org, days=3)
    [invoice] = [i for i in await kit.billing.invoices(org) if i.number == number]
    assert invoice.due_at is not None
    await kit.advance(invoice.due_at + timedelta(days=1, minutes=1) - kit.now())  # overdue
    await kit.billing.mark_invoice_paid(org, number)
    await kit.advance(timedelta(days=6))
    assert [m.template for m in kit.emails(org) if m.template.startswith("invoice_")] == [
        "invoice_issued", "invoice_due", "invoice_overdue"]
    assert (await kit.billing.subscription(org)).status == "active"


async def test_invoice_terms_refused_typed(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    with pytest.raises(InvalidRequest, match="due within 22 days"):
        await kit.billing.set_contract(org, net(kit, 30))
    assert (await kit.billing.subscription(org)).contract is None
    with pytest.raises(UnknownInvoice):
        await kit.billing.mark_invoice_paid(org, "INV-2099-000001")
    [first] = await kit.billing.invoices(org)
    other = f"{org}-other"
    await kit.billing.open_wallet(other)
    with pytest.raises(UnknownInvoice):  # another organization's invoice is not this one's
        await kit.billing.mark_invoice_paid(other, first.number)


async def test_a_payment_the_subscription_cannot_be_told_of_still_stands(kit: TestKit, org: str) -> None:
    """The invoice is paid in the database first; telling the subscription is best effort (it reads the invoice
    again at its next look). Here no subscription workflow exists at all: the payment stands, typed, unharmed."""
    await kit.billing.open_wallet(org)
    now = kit.now()
    charge = ChargeRequest(org, f"{org}:manual", "renewal", [InvoiceLine("pro x 1 seats", 1, 9000, 9000)], now)
    issued = await kit.payments.issue_invoice(IssueInvoice(charge, now + timedelta(days=7)))
    with pytest.raises(InvalidRequest, match="no subscription"):
        await kit.billing.subscription(org)
    paid = await kit.billing.mark_invoice_paid(org, issued.invoice_number, reference="transfer 7")
    assert (paid.number, paid.status) == (issued.invoice_number, "paid")
    assert [(c.status, c.amount_cents) for c in kit.charges(org)] == [("succeeded", 9000)]
