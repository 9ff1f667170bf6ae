"""BillingClient, the facade platform teams import, end to end on the embedded PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal

import pytest

from models.errors import InsufficientCredits, InvalidRequest, ServiceUnavailable
from settings import Settings
from starter import BillingClient


@pytest.fixture
async def billing(database_url: str) -> AsyncIterator[BillingClient]:
    client = await BillingClient.connect(replace(Settings.from_env(), database_url=database_url, db_pool_size=2))
    yield client
    await client.close()


async def test_contract_names(billing: BillingClient) -> None:
    await billing.open_wallet("client-acme")  # free: 50 credits today
    r = await billing.debit("client-acme", action="ai_chat", tier="fast", quantity=5, user_id="u1",
                            idempotency_key="k")
    assert r.cost == Decimal("5")
    async with billing.hold("client-acme", action="credit_score", idempotency_key="h") as h:
        assert h.cost == Decimal("17")
    bal = await billing.balance("client-acme")
    assert (bal.available, bal.plan, bal.topup, bal.allocation, bal.consumed_this_period) == (
        Decimal("28"), Decimal("28"), Decimal("0"), Decimal("50"), Decimal("22"))
    assert [u.key for u in await billing.usage("client-acme", by="user")] == [None, "u1"]
    assert len(await billing.transactions("client-acme")) == 5  # grant, debit, hold, release, debit
    with pytest.raises(InsufficientCredits):
        await billing.debit("client-acme", action="lead_enrichment", quantity=1000, idempotency_key="big")
    with pytest.raises(InvalidRequest, match="unknown plan"):
        await billing.open_wallet("client-other", plan="platinum")
    with pytest.raises(InvalidRequest, match="subscribe"):
        await billing.open_wallet("client-other", plan="pro")  # paid credits come with a paid period


async def test_without_stripe_configured_metering_works_and_a_new_card_is_refused_before_any_write(
        database_url: str) -> None:
    # Outside development mode, no STRIPE_API_KEY means no Stripe at all (never the fake one on loopback).
    settings = replace(Settings.from_env(), database_url=database_url, db_pool_size=2, stripe_api_key=None,
                       dev_mode=False)
    async with await BillingClient.connect(settings) as billing:
        await billing.open_wallet("client-nostripe")
        await billing.debit("client-nostripe", action="ai_chat", tier="fast", idempotency_key="k")
        assert await billing.invoices("client-nostripe") == []
        with pytest.raises(ServiceUnavailable, match="STRIPE_API_KEY"):
            await billing.buy_credits("client-nostripe", pack="500", idempotency_key="p", email="ops@acme.test",
                                      payment_method="pm_card_visa")
        assert await billing.payments.profile("client-nostripe") is None  # nothing was written
