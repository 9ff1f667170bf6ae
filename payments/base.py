"""What every part of `Payments` shares: the PostgreSQL pool, the Stripe client and the per-key advisory lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import LockNotAvailable
from stripe import StripeClient

from ledger.pool import LeanPool
from models.errors import ServiceUnavailable

# Advisory lock classes (the two-int4 form never collides with one-bigint advisory locks).
LOCK_PAYMENT = 0x5041  # "PA"
LOCK_CUSTOMER = 0x4355  # "CU"
# How long an attempt waits for another attempt on the same key (which holds the lock across its Stripe
# call, at most the client's 30 s timeout): then ServiceUnavailable, and Temporal retries (rule 5).
LOCK_WAIT_SECONDS = 60.0


class PaymentsBase:
    """`db`: a LeanPool (shared) or a database URL (a pool of `pool_size` of its own, opened on first use,
    closed by `close`)."""

    def __init__(self, db: LeanPool | str, client: StripeClient | None, *, pool_size: int = 4) -> None:
        self._own_pool = isinstance(db, str)
        self.pool = LeanPool(db, pool_size) if isinstance(db, str) else db
        self._opened = not self._own_pool
        self._stripe = client
        self.lock_wait_seconds = LOCK_WAIT_SECONDS

    @property
    def has_stripe(self) -> bool:
        return self._stripe is not None

    @property
    def stripe(self) -> StripeClient:
        """The Stripe client; without one (an SDK process with no STRIPE_API_KEY, outside development
        mode) the reads still work and whatever needs Stripe is refused before it starts."""
        if self._stripe is None:
            raise ServiceUnavailable("Stripe is not configured: set STRIPE_API_KEY (BILLING_DEV_MODE=1 uses the "
                                     "fake Stripe of the development stack)")
        return self._stripe

    async def _ready(self) -> LeanPool:
        if not self._opened:
            self._opened = True
            await self.pool.open()
        return self.pool

    async def close(self) -> None:
        if self._own_pool and self._opened:
            await self.pool.close()

    @asynccontextmanager
    async def _locked(self, lock_class: int, key: str) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection holding a session advisory lock on (lock_class, key): attempts on one key run one
        at a time, across workers. The lock is released on exit, or with the session if the process or
        the connection dies."""
        pool = await self._ready()
        async with pool.connection() as conn:
            try:
                # lock_timeout local to this transaction; the session lock it takes outlives the commit.
                async with conn.transaction():
                    await conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                       (f"{int(self.lock_wait_seconds * 1000)}ms",))
                    await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (lock_class, key))
            except LockNotAvailable:
                raise ServiceUnavailable(f"{key!r} has been busy with another attempt for more than "
                                         f"{self.lock_wait_seconds:g}s") from None
            try:
                yield conn
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (lock_class, key))
                except BaseException:
                    await conn.close()  # ends the session, and its locks; the pool replaces it
                    raise
