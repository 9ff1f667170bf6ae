"""Catalog versions through the test kit (DESIGN.md section 10): a subscription keeps the version it was priced on
(grandfathering) until it changes plan or an operator migrates it; a contract locks prices for its term; the
annual discount is per plan. Exact amounts.

A module of its own: the versions published here are withdrawn when each test ends (CATALOGS.published_for_test),
and the module's kit, with the subscriptions priced on them, goes with the module."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from models.catalog import CATALOG, CATALOGS
from models.contract_types import ContractTerms
from models.errors import InvalidRequest
from testkit import TestKit

EMAIL = "billing@acme.test"
PRO_AT_99 = CATALOG.revised(version=2, plans={"pro": {"price_cents_per_seat": 9900, "credits": "12000"}})


def renewals(kit: TestKit, org: str) -> list[int]:
    return [c.amount_cents for c in kit.charges(org) if c.purpose in ("subscription", "renewal")]


async def test_a_price_change_reprices_new_subscribers_only_until_an_operator_migrates(kit: TestKit, org: str) -> None:
    old, new = f"{org}-old", f"{org}-new"
    await kit.billing.subscribe(old, plan="pro", email=EMAIL)
    with CATALOGS.published_for_test(PRO_AT_99):
        sub = await kit.billing.subscribe(new, plan="pro", email=EMAIL)
        assert sub.catalog_version == 2 and (await kit.billing.subscription(old)).catalog_version == 1
        await kit.advance(timedelta(days=31, minutes=1))
        assert renewals(kit, old) == [9000, 9000]   # the old price, the old allocation
        assert renewals(kit, new) == [9900, 9900]
        assert (await kit.billing.balance(old)).allocation == Decimal(10000)
        assert (await kit.billing.balance(new)).allocation == Decimal(12000)
        migrated = await kit.billing.migrate_catalog(old)
        assert migrated.catalog_version == 2
        with pytest.raises(InvalidRequest, match="unknown catalog version 7"):
            await kit.billing.migrate_catalog(old, version=7)
        await kit.advance(timedelta(days=31))
        assert renewals(kit, old) == [9000, 9000, 9900]
        assert (await kit.billing.balance(old)).allocation == Decimal(12000)


async def test_an_upgrade_moves_to_the_current_version(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    assert sub.period_start is not None and sub.period_end is not None
    with CATALOGS.published_for_test(PRO_AT_99):
        up = await kit.billing.upgrade(org, plan="pro")
        assert (up.plan, up.catalog_version) == ("pro", 2)
        [charge] = [c for c in kit.charges(org) if c.purpose == "upgrade"]
        # (99.00 - 49.00) for what is left of the period: at most 50.00, the new version's price less the old.
        assert 4990 <= charge.amount_cents <= 5000
        await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
        assert renewals(kit, org)[-1] == 9900


async def test_a_contract_locks_prices_for_its_term(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    now = kit.now()
    await kit.billing.set_contract(org, ContractTerms(now, now + timedelta(days=365)))
    with CATALOGS.published_for_test(PRO_AT_99):
        with pytest.raises(InvalidRequest, match="locks prices"):
            await kit.billing.migrate_catalog(org)
        assert (await kit.billing.subscription(org)).catalog_version == 1


async def test_seed_003s_10_and_seed_000s_20_percent_annual_discounts_side_by_side(kit: TestKit, org: str) -> None:
    both = CATALOG.revised(version=3, plans={"starter": {"annual_discount_percent": 10},
                                             "pro": {"annual_discount_percent": 20}})
    with CATALOGS.published_for_test(both):
        await kit.billing.subscribe(f"{org}-salestools", plan="starter", interval="year", email=EMAIL)
        await kit.billing.subscribe(f"{org}-clozup", plan="pro", interval="year", email=EMAIL)
        assert renewals(kit, f"{org}-salestools") == [52920]   # 12 x 49.00 less 10%
        assert renewals(kit, f"{org}-clozup") == [86400]       # 12 x 90.00 less 20%
