"""Every wait has a deadline (docs/product.md, failure model rule 5): a pool with no connection free
answers ServiceUnavailable instead of waiting for ever."""

from __future__ import annotations

import time

import pytest

from ledger.pool import LeanPool
from models.errors import ServiceUnavailable


async def test_a_pool_with_no_free_connection_answers_service_unavailable_in_time(database_url: str) -> None:
    pool = LeanPool(database_url, 1, checkout_timeout=0.2)
    await pool.open()
    try:
        async with pool.connection():  # the one connection is busy (a slow call, a stuck database)
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable, match=r"no database connection came free within 0\.2s"):
                await pool.fetchone("SELECT 1", ())
            assert time.monotonic() - started < 2
        assert await pool.fetchone("SELECT 1", ()) == (1,)  # free again: answers at once
    finally:
        await pool.close()
