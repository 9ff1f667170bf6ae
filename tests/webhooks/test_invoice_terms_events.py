"""An endpoint subscribes to an open invoice's events (invoice payment terms; the triggers of migration 0011,
the types in models/webhook_types.py) and receives them once: the renewal's invoice issued open with its due
date, then paid when the transfer is recorded; none of invoice.due or invoice.overdue for an invoice paid in time."""

from __future__ import annotations

from datetime import timedelta

from models.contract_types import ContractTerms
from models.webhook_types import INVOICE_DUE, INVOICE_ISSUED, INVOICE_OVERDUE, INVOICE_PAID
from testkit import TestKit
from tests.support.keys import stamp
from tests.webhooks.conftest import Register
from tests.webhooks.receiver import Receiver


async def test_an_open_invoice_issued_then_paid_is_delivered_once_each(
    kit: TestKit, org: str, register: Register, receiver: Receiver
) -> None:
    sub = await kit.billing.subscribe(org, plan="enterprise", email="finance@cloro.test")
    assert sub.period_end is not None
    now = kit.now()
    await kit.billing.set_contract(org, ContractTerms(now - timedelta(days=1), now + timedelta(days=365),
                                                      payment_terms="invoice", net_days=7))
    await register("invoices", [INVOICE_ISSUED, INVOICE_DUE, INVOICE_OVERDUE, INVOICE_PAID], org_id=org)
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    await kit.billing.mark_invoice_paid(org, invoice.number, reference="transfer 4411")
    await kit.billing.mark_invoice_paid(org, invoice.number)  # a repeat: no second event
    await kit.advance(timedelta(days=10))  # past the due date: paid, so neither due nor overdue
    await kit.settle()
    got = receiver.acked("invoices")
    assert [(e["type"], e["data"]["number"]) for e in got] == [(INVOICE_ISSUED, invoice.number),
                                                              (INVOICE_PAID, invoice.number)]
    issued, paid = (e["data"] for e in got)
    due = stamp(sub.period_end + timedelta(days=7))
    assert (issued["status"], issued["due_at"], issued["total_cents"]) == ("open", due, 20000)
    assert (paid["due_at"], paid["total_cents"], paid["currency"]) == (due, 20000, "EUR")
    assert paid["paid_at"] is not None
