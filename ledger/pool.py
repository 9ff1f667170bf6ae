"""A lean connection pool for the ledger's one-round-trip calls.

psycopg_pool is the general tool, but its checkout plus a new cursor per call cost ~55 us of client CPU
per debit here (bench/ledger.py, measured with a profiler): a third of the client's whole share. This
pool keeps one prepared cursor per connection and hands slots out from a LIFO. A connection that
comes back in any state but idle (an error or a cancelled await mid-query) is replaced, never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection, AsyncCursor, OperationalError
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import tuple_row

from models.errors import ServiceUnavailable


class _Slot:
    __slots__ = ("conn", "cur")

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self.cur: AsyncCursor[Any] = conn.cursor()


# Every wait has a deadline (failure model rule 5): a caller hears ServiceUnavailable, never a hang.
CHECKOUT_TIMEOUT_SECONDS = 10.0   # waiting for a free connection of the pool
CONNECT_TIMEOUT_SECONDS = 10      # opening a connection (libpq's connect_timeout: whole seconds)


class LeanPool:
    def __init__(self, url: str, size: int, *, checkout_timeout: float = CHECKOUT_TIMEOUT_SECONDS) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.url, self.size = url, size
        self.checkout_timeout = checkout_timeout
        self._idle: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        self._all: set[_Slot] = set()
        self._replacing: set[asyncio.Task[None]] = set()

    async def _connect(self) -> _Slot:
        conn = await AsyncConnection.connect(self.url, autocommit=True, row_factory=tuple_row,
                                             connect_timeout=CONNECT_TIMEOUT_SECONDS)
        conn.prepare_threshold = 0  # every statement prepared from its first use
        slot = _Slot(conn)
        self._all.add(slot)
        return slot

    async def open(self) -> None:
        for slot in await asyncio.gather(*(self._connect() for _ in range(self.size))):
            self._idle.put_nowait(slot)

    async def close(self) -> None:
        for task in list(self._replacing):
            task.cancel()
        for slot in list(self._all):
            await slot.conn.close()
        self._all.clear()

    async def _checkout(self) -> _Slot:
        try:
            return self._idle.get_nowait()
        except asyncio.QueueEmpty:
            pass
        try:
            async with asyncio.timeout(self.checkout_timeout):
                return await self._idle.get()
        except TimeoutError:
            raise ServiceUnavailable(
                f"no database connection came free within {self.checkout_timeout:g}s (a pool of {self.size}): "
                "the database is slow or away, or the pool is too small for the load "
                "(BILLING_DB_POOL_SIZE)") from None

    @staticmethod
    def _dead(slot: _Slot) -> bool:
        return slot.conn.closed or slot.conn.broken or slot.conn.pgconn.status != ConnStatus.OK

    def _checkin(self, slot: _Slot) -> None:
        if not self._dead(slot) and slot.conn.info.transaction_status == TransactionStatus.IDLE:
            self._idle.put_nowait(slot)
            return
        # Broken or mid-query (an error, a cancelled await): replace it in the background.
        self._all.discard(slot)
        task = asyncio.get_running_loop().create_task(self._replace(slot))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, slot: _Slot) -> None:
        await slot.conn.close()
        while True:
            try:
                self._idle.put_nowait(await self._connect())
                return
            except Exception:
                await asyncio.sleep(1.0)  # the server is away: keep the pool's size, try again

    async def fetchone(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one statement. If its connection turns out dead (a server restart, a killed backend, a
        network cut), run it once more on a new connection, which takes the dead one's place: every
        ledger call is idempotent by its key, so a call that did commit before its connection died
        answers the retry as a repeat."""
        slot = await self._checkout()
        try:
            try:
                await slot.cur.execute(sql, params)
                return await slot.cur.fetchall()
            except OperationalError as exc:
                if not self._dead(slot):
                    raise
                self._all.discard(slot)
                await slot.conn.close()
                try:
                    slot = await self._connect()
                    await slot.cur.execute(sql, params)
                    return await slot.cur.fetchall()
                except OperationalError as again:
                    raise _lost(again) from exc
        finally:
            self._checkin(slot)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        slot = await self._checkout()
        try:
            yield slot.conn
        except OperationalError as exc:
            if self._dead(slot):
                raise _lost(exc) from exc
            raise
        finally:
            self._checkin(slot)


def _lost(exc: OperationalError) -> ServiceUnavailable:
    """The database went away under a call (rule 5: a typed error, not the driver's). Whether the call
    committed is unknown; every ledger call is idempotent by its key, so the caller retries it as is."""
    return ServiceUnavailable(f"the database connection was lost and could not be opened again ({exc}); "
                              "the call may or may not have applied: retrying it under the same key is safe")
