"""BillingClient, the facade platform teams import, end to end on the embedded PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal

import pytest

from models.errors import InsufficientCredits, InvalidRequest
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
