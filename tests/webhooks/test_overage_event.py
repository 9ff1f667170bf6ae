"""The overage.invoiced event (migration 0010): written by a trigger in the transaction of its cause, the close of
a wallet's overage under a renewal's key (overage_closes, 0009), once per key and only for credits > 0; through
the kit, a renewal retried after Stripe refused its charge delivers it once, with the exact credits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from psycopg import AsyncConnection

from ledger import Ledger
from models.contract_types import ContractTerms
from models.ledger_types import CloseOverage, WalletTerms
from models.webhook_types import OVERAGE_INVOICED
from testkit import TestKit
from tests.conftest import T0, OrgFactory
from tests.support.keys import stamp
from tests.webhooks.conftest import Register, db_events
from tests.webhooks.receiver import Receiver


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    async with await AsyncConnection.connect(database_url, autocommit=True) as c:
        yield c


async def _overage_events(conn: AsyncConnection[Any], org_id: str) -> list[tuple[str, dict[str, Any]]]:
    cur = await conn.execute("SELECT id, data FROM events WHERE org_id = %s AND type = %s ORDER BY seq",
                             (org_id, OVERAGE_INVOICED))
    return [(i, d) for i, d in await cur.fetchall()]


class _Rollback(Exception):
    pass


async def test_a_close_writes_its_event_in_its_transaction_once_and_none_for_zero(
    conn: AsyncConnection[Any], ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("starter")  # 3,000 plan credits
    await ledger.set_terms(org, WalletTerms(overage_allowed=True))
    # Nothing recorded yet: a close of 0 credits is no event.
    empty = await ledger.close_overage(CloseOverage(org, f"{org}:empty:overage", T0))
    assert empty.credits == Decimal(0)
    assert await _overage_events(conn, org) == []

    await ledger.debit(org, "ai_chat", tier="fast", quantity=Decimal("3401.5"), idempotency_key="use", now=T0)
    # The close's own statement, rolled back: its event goes with it.
    with pytest.raises(_Rollback):
        async with conn.transaction():
            await conn.execute("SELECT * FROM ledger_close_overage(%s, %s, %s)", (org, f"{org}:rb:overage", T0))
            assert [d["credits"] for _, d in await _overage_events(conn, org)] == ["401.5"]
            raise _Rollback
    assert await _overage_events(conn, org) == []

    key = f"{org}:{stamp(T0 + timedelta(days=31))}:overage"
    at = T0 + timedelta(days=31, seconds=5)
    first = await ledger.close_overage(CloseOverage(org, key, at))
    again = await ledger.close_overage(CloseOverage(org, key, at + timedelta(minutes=3)))
    assert (first.credits, again.credits, again.replayed) == (Decimal("401.5"), Decimal("401.5"), True)
    [(event_id, data)] = await _overage_events(conn, org)
    assert event_id.startswith("evt_")
    assert data == {"credits": "401.5", "close_key": key, "closed_at": stamp(at)}


EMAIL = "finance@cloro.test"


async def test_a_renewal_retried_after_a_refused_charge_delivers_one_overage_event(
    kit: TestKit, org: str, register: Register, receiver: Receiver
) -> None:
    sub = await kit.billing.subscribe(org, plan="enterprise", email=EMAIL)
    assert sub.period_end is not None
    now = kit.now()
    await kit.billing.set_contract(org, ContractTerms(
        now - timedelta(days=1), now + timedelta(days=365), allowance_multiplier=Decimal("1.2"),
        overage_allowed=True, overage_rate_cents=Decimal("0.4")))
    await register("overage", [OVERAGE_INVOICED], org_id=org)
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=48000, idempotency_key="allocation")
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=Decimal("5000.25"),
                            idempotency_key="past-it")
    assert (await kit.billing.balance(org)).overage == Decimal("5000.25")

    # The renewal's charge is refused by Stripe for good (the overage was closed before it: the charge carries
    # it), the step becomes an incident; the retry closes under the same key again and gets the same figure,
    # replayed: no second close, so no second event.
    renewal_key = f"{org}:{stamp(sub.period_end)}:renewal"
    kit.payments.refuse_charges.add(renewal_key)
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
        assert "renewal failed" in ((await kit.billing.subscription(org)).incident or "")
    finally:
        kit.payments.refuse_charges.discard(renewal_key)
    done = await kit.billing.retry_now(org)
    assert (done.renewals, done.incident) == (1, None)
    await kit.settle()

    close_key = f"{org}:{stamp(sub.period_end)}:overage"
    [event] = receiver.acked("overage")
    assert (event["type"], event["org_id"]) == (OVERAGE_INVOICED, org)
    assert (event["data"]["credits"], event["data"]["close_key"]) == ("5000.25", close_key)
    assert event["data"]["closed_at"] >= stamp(sub.period_end)
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    assert [line.amount_cents for line in invoice.lines] == [20000, 2000]  # 5,000.25 x 0.4 = 2,000.1 cents

    # The next renewal has no overage: a close of 0, no event.
    await kit.advance(timedelta(days=31))
    await kit.settle()
    assert [e["data"]["close_key"] for e in receiver.acked("overage")] == [close_key]
    assert [t for _, _, t in db_events(kit, org)].count(OVERAGE_INVOICED) == 1
