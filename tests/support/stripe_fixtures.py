"""Session fixtures for the fake Stripe: one localstripe process (in memory) per test session, and a
`KitPayments` on it and the session's PostgreSQL. Import them into a test module (or tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from payments import close_stripe_client, stripe_client
from stack.stripe_server import CARD_OK, start_localstripe
from testkit.payments import KitPayments


@pytest.fixture(scope="session")
async def localstripe_url() -> AsyncIterator[str]:
    async with start_localstripe() as url:
        yield url


@pytest.fixture(scope="session")
async def payments(database_url: str, localstripe_url: str) -> AsyncIterator[KitPayments]:
    """Every customer created without a payment method gets a working card, as in the test kit."""
    client = stripe_client(base_url=localstripe_url)
    pay = KitPayments(database_url, client, default_card=CARD_OK, pool_size=8)
    yield pay
    await pay.close()
    await close_stripe_client(client)
