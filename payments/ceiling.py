"""Failure model rule 10: a ceiling on Stripe requests per second across every worker of the fleet
(BILLING_STRIPE_MAX_RPS; unset: no ceiling, and no database call).

Every Stripe request the engine makes goes through `CeilingHTTPClient`, the SDK's aiohttp client with one
step before each request on the wire: take a slot from `StripeCeiling`, or sleep (asyncio, never blocking)
until the next window and ask again. The engine's clients come from `stripe_client_from_settings`
(payments/stripe_client.py), which adds it when the setting is set: the worker, the test kit and
`BillingClient` alike.

The count is shared through PostgreSQL, which every worker already shares: one row per ceiling holding
the current second of the database clock and the requests granted in it, taken by one upsert
(ledger/sql/stripe_ceiling_take.sql; the table: migrations/versions/0005_stripe_ceiling.sql). Why a window
counter rather than a token bucket: the ceiling is stated, and checked at Stripe's side, per second, and a
window counter grants exactly N in each second of one clock, in one statement on one row that never grows.
A token bucket holding a second's burst lets up to 2N-1 through within one second; one paced at 1/N (no
burst) puts N+1 requests in some second at Stripe as soon as two requests' delays differ, unless its
spacing is padded, which loses throughput exactly when the ceiling matters. The counter's weak spots are
closed in its function: no request is sent in the last WINDOW_GUARD_SECONDS of a second, so one granted in
a second reaches Stripe in it; a second's slots are spread over the rest of it, so a one-second span that
straddles two seconds holds about N requests, not the 2N of two bursts at their starts (measured by
bench/storm.py); and a slot whose process woke too late to send in its second is given up (`stale`).

Cost, measured on this 2-core machine while others ran tests on it (embedded PostgreSQL 18, fsync on, the
slot always free, /tmp scripts timing the statement): 0.11-0.19 ms per slot from one client (5,200-9,300
takes/s), 5,800-11,600 takes/s from two clients of 4 connections taking at once on the one row; with
synchronous_commit on, 0.25-0.51 ms and 1,350-2,400/s. Against a Stripe ceiling of tens or hundreds of
requests per second, negligible. A refused request asks again once per second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import psycopg
import stripe
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ledger.pool import LeanPool
from models.errors import ServiceUnavailable
from settings import check_stripe_max_rps

log = logging.getLogger(__name__)

# The ceiling's name in stripe_ceiling: the engine's one Stripe account. Tests use keys of their own.
DEFAULT_KEY = "stripe"
# Every wait has a deadline (rule 5): then ServiceUnavailable, which Temporal retries with its backoff. Well
# inside an activity's 60 s start-to-close timeout (workflows/activity_defs.py), so the activity fails with
# the typed error rather than timing out, with time left for the request itself.
SLOT_WAIT_SECONDS = 20.0
# No request is sent in the last 0.2 s of a second: one granted before reaches Stripe in the same second
# unless it takes longer than that to leave the worker and cross the network (an event loop busy with
# workflow tasks on this loaded machine took up to ~0.2 s; longer stalls void the slot: `stale`). It costs
# no throughput: a second's slots are spread over its first 0.8 s. Below the ceiling, a request that comes
# in the last 0.2 s waits for the next second.
WINDOW_GUARD_SECONDS = 0.2
# The slot calls are one short statement each, on connections of their own: a charge holds a connection of
# the payments pool across its Stripe call, so sharing that pool could starve the slot it waits for.
CEILING_POOL_SIZE = 2


class StripeCeiling:
    """At most `max_rps` Stripe requests per second across every process that uses the same `key` in the
    same database. `db`: a LeanPool (shared) or a database URL (a pool of `pool_size` of its own, opened on
    first use, closed by `close`)."""

    def __init__(self, db: LeanPool | str, max_rps: int, *, key: str = DEFAULT_KEY,
                 wait_seconds: float = SLOT_WAIT_SECONDS, guard_seconds: float = WINDOW_GUARD_SECONDS,
                 pool_size: int = CEILING_POOL_SIZE) -> None:
        checked = check_stripe_max_rps(max_rps)
        assert checked is not None  # max_rps is an int: None is not a ceiling
        if not 0 <= guard_seconds < 1:
            raise ValueError(f"the guard is part of a second: 0 <= guard < 1, got {guard_seconds}")
        self.max_rps, self.key = checked, key
        self.wait_seconds, self.guard_seconds = wait_seconds, guard_seconds
        self._own_pool = isinstance(db, str)
        self.pool = LeanPool(_asynchronous_commit(db), pool_size) if isinstance(db, str) else db
        self._opened = not self._own_pool
        self._opening = asyncio.Lock()
        self.waits = 0  # times a request found the second full (or in its guard) and slept: for operators, tests
        self.stale = 0  # slots given up because this process woke too late to send in their second

    async def acquire(self) -> None:
        """Return once this process may send one Stripe request; ServiceUnavailable (retryable) if no slot
        came within `wait_seconds` or the database cannot be asked: the request is not sent (fail closed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        try:
            async with asyncio.timeout_at(deadline):  # the database call itself may hang as well
                while True:
                    asked = loop.time()
                    granted, wait, valid = await self._take()
                    if granted:
                        if wait > 0:
                            await asyncio.sleep(wait)  # the slot's place in its second (under a second)
                        if loop.time() - asked <= valid:
                            return
                        # This process stalled past the slot's second (a loaded machine, a long pause):
                        # sent now, the request would land in the next second on top of its own slots.
                        self.stale += 1
                        continue
                    self.waits += 1
                    if loop.time() + wait >= deadline:
                        break  # the next window opens after the deadline: say so now
                    await asyncio.sleep(wait)
        except TimeoutError:
            pass
        log.warning("no Stripe request slot within %gs (ceiling %d/s)", self.wait_seconds, self.max_rps)
        raise ServiceUnavailable(
            f"no Stripe request slot came free within {self.wait_seconds:g}s under the fleet's ceiling of "
            f"{self.max_rps} requests per second (BILLING_STRIPE_MAX_RPS): the request was not sent")

    async def _take(self) -> tuple[bool, float, float]:
        """(granted, seconds to wait before sending or before asking again, seconds the slot is good for)."""
        try:
            pool = await self._ready()
            row = await pool.fetchone("SELECT granted, wait_s, valid_s FROM stripe_ceiling_take(%s, %s, %s)",
                                      (self.key, self.max_rps, self.guard_seconds))
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"the Stripe request ceiling cannot be counted: the database is away "
                                     f"({exc.__class__.__name__}): the request was not sent") from None
        assert row is not None
        return bool(row[0]), float(row[1]), float(row[2] or 0.0)

    async def _ready(self) -> LeanPool:
        if self._opened:
            return self.pool
        async with self._opening:
            if not self._opened:
                try:
                    await self.pool.open()
                except BaseException:
                    await self.pool.close()  # the connections that did open; the next call tries again
                    raise
                self._opened = True
        return self.pool

    async def close(self) -> None:
        if self._own_pool and self._opened:
            self._opened = False
            await self.pool.close()


def _asynchronous_commit(url: str) -> str:
    """`url` with synchronous_commit off for the session: a slot's count matters for the current second
    only, and a server that crashes is back after that second has passed, so waiting for its WAL flush
    would buy nothing (it was most of a slot's cost: see the module docstring)."""
    params = conninfo_to_dict(url)
    params["options"] = f"{params.get('options') or ''} -c synchronous_commit=off".strip()
    return make_conninfo("", **params)


class CeilingHTTPClient(stripe.AIOHTTPClient):
    """The SDK's aiohttp client, each request on the wire taking a slot of `ceiling` first. The SDK's
    non-streaming `request_async` goes through `request_stream_async`, so this one hook sees every request
    (and would see each network retry, which the engine's clients do not make: max_network_retries=0)."""

    def __init__(self, ceiling: StripeCeiling, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ceiling = ceiling

    async def request_stream_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None,
    ) -> Any:
        await self.ceiling.acquire()
        return await super().request_stream_async(method, url, headers, post_data)

    async def close_async(self) -> None:
        try:
            await super().close_async()  # type: ignore[no-untyped-call]
        finally:
            await self.ceiling.close()
