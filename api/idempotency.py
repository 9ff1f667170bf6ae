"""Idempotency-Key for the POSTs the engine does not key itself (subscription changes, keys, the wallet, a usage
guard's resume): the first answer is stored in http_idempotency (migration 0006) and replayed.

Per (scope, key), scope being the organization the request acts on ('' for platform-level requests):
- the first request claims the key (a row with no status: in flight), runs, and stores its answer, status and
  body, a refusal included (a 402 stays a 402);
- a repeat with the same method, path and body (its fingerprint) gets the stored answer with
  `Idempotent-Replayed: true`, and runs nothing;
- the same key with another request is 409 IdempotencyConflict, as is a duplicate while the first is in flight
  (it would otherwise run twice);
- a 5xx answer, or a request that dies, is not stored: the key is free again and a retry runs.
A claim left by a process that died mid-request is taken over after STALE_AFTER (longer than any request may
take: BillingClient answers within its deadline). Like the engine's own keys, these are kept for good.

Debits, holds and credit purchases use the engine's own keys instead (the ledger's and the purchase workflow's):
they are exactly-once in the same transaction as their effect, which a table beside it could not be.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from api.openapi import status_of_name
from api.problems import PROBLEM_JSON, billing_problem, problem
from ledger.pool import LeanPool
from models.checks import check_id
from models.errors import BillingError
from starter import CLIENT_DEADLINE

STALE_AFTER = 2 * CLIENT_DEADLINE
REPLAYED = "Idempotent-Replayed"

IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", examples=["change-3"], description="makes a retry safe: a repeat of this request under "
    "the same key answers as the first did (header Idempotent-Replayed: true) and does nothing again; another request "
    "under it is 409")]


class Once:
    """Runs one POST at most once per Idempotency-Key (the module docstring says how)."""

    def __init__(self, pool: LeanPool, request: Request) -> None:
        self.pool = pool
        self.request = request

    async def __call__(self, scope: str, key: str | None, work: Callable[[], Awaitable[BaseModel]], *,
                       status_code: int = 200, stored: Callable[[BaseModel], BaseModel] | None = None) -> Response:
        """Answer `work()` as `status_code` (a BillingError as its problem). `stored` gives what a replay shows
        when the first answer must not be kept whole (a new API key's secret)."""
        if key is None:
            return (await _run(work, status_code, stored))[0]
        check_id("Idempotency-Key", key)
        fingerprint = await self._fingerprint()
        found = await self._claim(scope, key, fingerprint)
        if found is not None:
            return found
        try:
            response, body = await _run(work, status_code, stored)
        except BaseException:
            await self._forget(scope, key)  # an unanswered request: a retry may run
            raise
        if response.status_code >= 500:
            await self._forget(scope, key)
        else:
            await self.pool.fetchone(
                "UPDATE http_idempotency SET status = %s, body = %s WHERE scope = %s AND key = %s RETURNING 1",
                (response.status_code, body, scope, key))
        return response

    async def _fingerprint(self) -> str:
        raw = await self.request.body()
        try:  # the same JSON however it is spaced or ordered
            body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
        except ValueError:
            body = raw
        head = f"{self.request.method} {self.request.url.path}?{self.request.url.query}\n".encode()
        return hashlib.sha256(head + body).hexdigest()

    async def _claim(self, scope: str, key: str, fingerprint: str) -> Response | None:
        """None when this request now holds the key (it runs), else the answer it gets instead."""
        for _ in range(3):  # a row forgotten between our INSERT and SELECT: claim again
            claimed = await self.pool.fetchone(
                "INSERT INTO http_idempotency (scope, key, fingerprint, created_at) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT DO NOTHING RETURNING 1", (scope, key, fingerprint))
            if claimed is not None:
                return None
            row = await self.pool.fetchone(
                "SELECT fingerprint, status, body, created_at < now() - %s FROM http_idempotency "
                "WHERE scope = %s AND key = %s", (STALE_AFTER, scope, key))
            if row is None:
                continue
            stored_fingerprint, status, body, stale = row
            if stored_fingerprint != fingerprint:
                return _conflict(scope, key, "was already used for a different request")
            if status is not None:
                media = PROBLEM_JSON if status >= 400 else "application/json"
                return Response(bytes(body), status_code=status, media_type=media, headers={REPLAYED: "true"})
            if not stale:
                return _conflict(scope, key, "is in use by a request still in flight; retry once it has answered")
            taken = await self.pool.fetchone(
                "UPDATE http_idempotency SET created_at = now() WHERE scope = %s AND key = %s AND status IS NULL "
                "AND created_at < now() - %s RETURNING 1", (scope, key, STALE_AFTER))
            if taken is not None:
                return None  # its first request died unanswered: this one runs
        return _conflict(scope, key, "is in use by a request still in flight; retry once it has answered")

    async def _forget(self, scope: str, key: str) -> None:
        await self.pool.fetchone("DELETE FROM http_idempotency WHERE scope = %s AND key = %s AND status IS NULL "
                                 "RETURNING 1", (scope, key))


async def _run(work: Callable[[], Awaitable[BaseModel]], status_code: int,
               stored: Callable[[BaseModel], BaseModel] | None) -> tuple[Response, bytes]:
    """The answer to send and the body to store."""
    try:
        result = await work()
    except BillingError as exc:
        refused = billing_problem(exc)
        return refused, bytes(refused.body)
    body = result.model_dump_json().encode()
    kept = stored(result).model_dump_json().encode() if stored else body
    return Response(body, status_code=status_code, media_type="application/json"), kept


def _conflict(scope: str, key: str, why: str) -> JSONResponse:
    return problem(status_of_name("IdempotencyConflict"), "IdempotencyConflict", f"Idempotency-Key {key!r} {why}",
                   org_id=scope or None, key=key)


async def once(request: Request) -> Once:  # async: no thread-pool hop (api/service.py)
    return Once(request.app.state.service.billing.ledger.pool, request)


IdempotentPost = Annotated[Once, Depends(once)]
