"""Fixtures of the ledger's tests beyond tests/conftest.py's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ledger import Ledger


@pytest.fixture
async def grouped(database_url: str) -> AsyncIterator[Ledger]:
    """One debit statement in flight: the debits of a burst after the first go together in the next one."""
    led = await Ledger.open(database_url, pool_size=4, debit_calls=1)
    yield led
    await led.close()
