"""Wallet terms (Ledger.set_terms: overage, its cap, the open-hold limit) and the allocation override of
StartPeriod and ChangePlan (a contract's credits), on the real PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import default as default_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.ledger import LedgerActivities
from ledger import Ledger
from models.errors import ConcurrencyLimitExceeded, IdempotencyConflict, InvalidRequest, UnknownOrganization
from models.ledger_types import ChangePlan, CloseOverage, SetTerms, StartPeriod, WalletTerms
from tests.conftest import T0, OrgFactory

D = Decimal


async def _wallet_row(database_url: str, org: str) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT xmin::text, updated_at, overage_allowed, overage_cap, concurrency_limit FROM wallets "
            "WHERE org_id = %s", (org,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def test_default_terms_are_no_overage_and_the_plans_limit(ledger: Ledger, new_org: OrgFactory) -> None:
    org = await new_org("pro")
    bal = await ledger.balance(org, now=T0)
    assert (bal.overage, bal.overage_cap, bal.overage_allowed, bal.overage_held) == (D(0), None, False, D(0))
    assert (bal.concurrency_limit, bal.concurrency_open) == (20, 0)
    assert WalletTerms() == WalletTerms(False, None, None)


async def test_set_terms_twice_changes_once(ledger: Ledger, new_org: OrgFactory, database_url: str) -> None:
    org = await new_org("enterprise")
    terms = WalletTerms(overage_allowed=True, overage_cap=D("5000"), concurrency_limit=130)
    assert await ledger.set_terms(org, terms) is True
    first = await _wallet_row(database_url, org)
    assert first[2:] == (True, 5_000_000, 130)
    assert await ledger.set_terms(org, terms) is False  # the same terms: nothing written, not even updated_at
    assert await _wallet_row(database_url, org) == first
    bal = await ledger.balance(org, now=T0)
    assert (bal.overage_allowed, bal.overage_cap, bal.concurrency_limit) == (True, D("5000"), 130)
    # No cap; then back to the defaults (the plan's limit again).
    assert await ledger.set_terms(org, WalletTerms(True, None, 130)) is True
    assert (await ledger.balance(org, now=T0)).overage_cap is None
    assert await ledger.set_terms(org, WalletTerms()) is True
    bal = await ledger.balance(org, now=T0)
    assert (bal.overage_allowed, bal.overage_cap, bal.concurrency_limit) == (False, None, 100)


@pytest.mark.parametrize("terms", [
    WalletTerms(True, D("-1")),                     # a negative cap
    WalletTerms(True, D("0.0001")),                 # finer than a milli-credit
    WalletTerms(True, 1.5),                         # type: ignore[arg-type]  # a float
    WalletTerms(True, None, 0),                     # a limit below 1
    WalletTerms(True, None, -3),
    WalletTerms(True, None, True),                  # a bool is no number of holds
    WalletTerms(True, None, "5"),                   # type: ignore[arg-type]
    WalletTerms(True, None, 10**7),                 # past any sane limit (and the integer column)
    WalletTerms("yes"),                             # type: ignore[arg-type]
], ids=["negative-cap", "sub-milli-cap", "float-cap", "zero-limit", "negative-limit", "bool-limit", "str-limit",
        "huge-limit", "str-allowed"])
async def test_bad_terms_are_refused_and_store_nothing(
    ledger: Ledger, new_org: OrgFactory, database_url: str, terms: WalletTerms
) -> None:
    org = await new_org("pro")
    before = await _wallet_row(database_url, org)
    with pytest.raises(InvalidRequest):
        await ledger.set_terms(org, terms)
    assert await _wallet_row(database_url, org) == before


async def test_terms_of_an_unknown_organization(ledger: Ledger) -> None:
    with pytest.raises(UnknownOrganization):
        await ledger.set_terms("no-such-org-terms", WalletTerms(True))
    with pytest.raises(InvalidRequest):
        await ledger.set_terms("bad org id!", WalletTerms(True))
    with pytest.raises(InvalidRequest):
        await ledger.set_terms("x", {"overage_allowed": True})  # type: ignore[arg-type]


async def test_130_holds_open_the_131st_refused_and_the_limit_survives_renewal_and_plan_change(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("enterprise")
    await ledger.set_terms(org, WalletTerms(concurrency_limit=130))  # 1.3 x enterprise's 100, computed by the caller
    ttl = timedelta(days=2)
    for i in range(130):
        h = await ledger.hold(org, "credit_score", idempotency_key=f"h{i}", ttl=ttl, now=T0)
    assert (h.concurrency_limit, h.concurrency_open) == (130, 130)
    with pytest.raises(ConcurrencyLimitExceeded) as refused:
        await ledger.hold(org, "credit_score", idempotency_key="h130", ttl=ttl, now=T0)
    assert refused.value.limit == 130
    bal = await ledger.balance(org, now=T0)
    assert (bal.concurrency_limit, bal.concurrency_open, bal.held) == (130, 130, D(17 * 130))
    # Settling reports the same limit.
    released = await ledger.release(org, "h0", now=T0)
    assert (released.concurrency_limit, released.concurrency_open) == (130, 129)

    # A renewal (start_period with the plan's terms) and a plan change keep the terms' limit.
    t1 = T0 + timedelta(days=1)
    await ledger.start_period(StartPeriod(org, f"{org}:renewal", "enterprise", t1, t1 + timedelta(days=30), t1))
    assert (await ledger.balance(org, now=t1)).concurrency_limit == 130
    await ledger.change_plan(ChangePlan(org, f"{org}:change", "pro", t1))
    assert (await ledger.balance(org, now=t1)).concurrency_limit == 130
    await ledger.hold(org, "credit_score", idempotency_key="h130", ttl=ttl, now=t1)  # 130 open again
    with pytest.raises(ConcurrencyLimitExceeded):
        await ledger.hold(org, "credit_score", idempotency_key="h131", ttl=ttl, now=t1)
    # Cleared terms: the plan's (pro: 20) applies again.
    await ledger.set_terms(org, WalletTerms())
    assert (await ledger.balance(org, now=t1)).concurrency_limit == 20


async def test_a_contract_allocation_on_start_period_and_its_idempotency(ledger: Ledger) -> None:
    org = "terms-allocation-1"
    end = T0 + timedelta(days=31)
    req = StartPeriod(org, f"{org}:start", "enterprise", T0, end, T0, credits=D("48000"))
    first = await ledger.start_period(req)
    assert (first.available, first.replayed) == (D("48000"), False)
    again = await ledger.start_period(req)
    assert (again.available, again.replayed) == (D("48000"), True)
    with pytest.raises(IdempotencyConflict):  # the same key for another allocation
        await ledger.start_period(StartPeriod(org, f"{org}:start", "enterprise", T0, end, T0, credits=D("40000")))
    bal = await ledger.balance(org, now=T0)
    assert (bal.allocation, bal.plan, bal.available) == (D("48000"), D("48000"), D("48000"))
    # A renewal not yet paid grants nothing, whatever the allocation.
    t1 = end
    await ledger.start_period(StartPeriod(org, f"{org}:renewal", "enterprise", t1, t1 + timedelta(days=28), t1,
                                          grant=False, credits=D("48000")))
    assert (await ledger.balance(org, now=t1)).available == D(0)
    # None is the plan's catalog credits: today's behaviour.
    t2 = t1 + timedelta(hours=1)
    await ledger.start_period(StartPeriod(org, f"{org}:paid", "enterprise", t1, t1 + timedelta(days=28), t2))
    assert (await ledger.balance(org, now=t2)).allocation == D("40000")


async def test_change_plan_with_a_contract_allocation_subtracts_what_was_consumed(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    await ledger.debit(org, "insight", tier="pro", quantity=10, idempotency_key="d1", now=T0)  # 1,500
    await ledger.change_plan(ChangePlan(org, f"{org}:up", "enterprise", T0, credits=D("48000")))
    bal = await ledger.balance(org, now=T0)
    assert (bal.plan_name, bal.allocation, bal.plan, bal.consumed_this_period) == (
        "enterprise", D("48000"), D("46500"), D("1500"))
    # An allocation below what was consumed leaves no plan credits (never below 0).
    await ledger.change_plan(ChangePlan(org, f"{org}:small", "enterprise", T0, credits=D("1000")))
    bal = await ledger.balance(org, now=T0)
    assert (bal.allocation, bal.plan) == (D("1000"), D(0))


@pytest.mark.parametrize("credits", [D("-1"), D("0.0001"), 12.5, "lots"], ids=["negative", "sub-milli", "float",
                                                                               "text"])
async def test_a_bad_allocation_is_refused_and_writes_nothing(
    ledger: Ledger, new_org: OrgFactory, credits: Any
) -> None:
    org = await new_org("pro")
    entries = len(await ledger.transactions(org))
    with pytest.raises(InvalidRequest):
        await ledger.change_plan(ChangePlan(org, f"{org}:up", "enterprise", T0, credits=credits))
    with pytest.raises(InvalidRequest):
        t1 = T0 + timedelta(days=31)
        await ledger.start_period(StartPeriod(org, f"{org}:renewal", "pro", t1, t1 + timedelta(days=28), t1,
                                              credits=credits))
    assert len(await ledger.transactions(org)) == entries
    assert (await ledger.balance(org, now=T0)).allocation == D("10000")


async def test_the_free_plan_takes_no_allocation_override(ledger: Ledger) -> None:
    with pytest.raises(InvalidRequest, match="per day"):
        await ledger.start_period(StartPeriod("terms-free-1", "terms-free-1:start", "free", T0, None, T0,
                                              credits=D("100")))
    with pytest.raises(UnknownOrganization):  # nothing was opened
        await ledger.balance("terms-free-1", now=T0)


def test_payloads_recorded_before_the_credits_field_decode_to_the_plans_credits() -> None:
    """StartPeriod and ChangePlan are activity inputs in recorded histories: an old payload (no `credits`)
    decodes with credits None, today's behaviour."""
    converter = default_converter().payload_converter
    old_start = {"org_id": "o", "key": "k", "plan": "pro", "period_start": T0.isoformat(),
                 "period_end": (T0 + timedelta(days=31)).isoformat(), "now": T0.isoformat(), "grant": True}
    old_change = {"org_id": "o", "key": "k", "plan": "pro", "now": T0.isoformat()}
    for cls, data in ((StartPeriod, old_start), (ChangePlan, old_change)):
        payload = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(data).encode())
        decoded = converter.from_payloads([payload], [cls])[0]
        assert isinstance(decoded, cls) and decoded.credits is None and decoded.plan == "pro"


async def test_the_ledger_activities_set_terms_and_close_overage(ledger: Ledger, new_org: OrgFactory) -> None:
    """What the subscription workflow runs (ledger.set_terms, ledger.close_overage), through the activities: the
    results, and a bad request as a non-retryable typed failure."""
    org = await new_org("pro")
    env = ActivityEnvironment()
    acts = LedgerActivities(ledger)
    assert await env.run(acts.set_terms, SetTerms(org, WalletTerms(True, D("50")))) is True
    assert await env.run(acts.set_terms, SetTerms(org, WalletTerms(True, D("50")))) is False
    await ledger.debit(org, "lead_enrichment", quantity=2010, idempotency_key="d1", now=T0)  # 50 past 10,000
    closed = await env.run(acts.close_overage, CloseOverage(org, f"{org}:overage", T0))
    assert (closed.credits, closed.replayed) == (D("50"), False)
    with pytest.raises(ApplicationError) as failed:
        await env.run(acts.set_terms, SetTerms(org, WalletTerms(True, D("-1"))))
    assert (failed.value.type, failed.value.non_retryable) == ("InvalidRequest", True)
    with pytest.raises(ApplicationError) as failed:
        await env.run(acts.close_overage, CloseOverage("no-such-org-activity", "k", T0))
    assert failed.value.non_retryable
