"""The subscription lifecycle through the test kit (time-skipping Temporal, real PostgreSQL, localstripe,
SMTP): every rule of DESIGN.md section 4 with exact amounts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from models.errors import InvalidRequest, PaymentDeclined
from testkit import TestKit

EMAIL = "billing@acme.test"


def templates(kit: TestKit, org: str) -> list[str]:
    return [m.template for m in kit.emails(org)]


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
