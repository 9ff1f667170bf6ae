"""Idempotency-Key of the POSTs the engine does not key itself (api/idempotency.py), failures injected: a duplicate
while the first is in flight (409, then the key taken over once its holder is long dead), concurrent duplicates run
once, and a 5xx answer (Temporal unreachable) is not stored, so the retry runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import psycopg

from api.app import create_app
from api.idempotency import STALE_AFTER
from api.server import serving
from settings import Settings
from stack.mail import free_port
from starter import BillingClient
from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"


async def _rows(kit: TestKit, org: str) -> dict[str, tuple[str, int | None]]:
    async with await psycopg.AsyncConnection.connect(kit.database_url) as conn:
        cur = await conn.execute("SELECT key, fingerprint, status FROM http_idempotency WHERE scope = %s", (org,))
        return {key: (fingerprint, status) for key, fingerprint, status in await cur.fetchall()}


async def _sql(kit: TestKit, sql: str, params: tuple[object, ...]) -> None:
    async with await psycopg.AsyncConnection.connect(kit.database_url, autocommit=True) as conn:
        await conn.execute(sql, params)


async def test_a_duplicate_in_flight_is_409_until_its_holder_is_long_dead(kit: TestKit, org: str,
                                                                         client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/subscription/retry"  # answers 200 each time it runs (no step has failed)
    assert (await http.post(url, headers={"Idempotency-Key": "c1"})).status_code == 200
    fingerprint, _ = (await _rows(kit, org))["c1"]
    # The same request under "c2" is in flight in another process (its claim: a row with no answer yet).
    await _sql(kit, "INSERT INTO http_idempotency (scope, key, fingerprint, created_at) VALUES (%s, 'c2', %s, now())",
               (org, fingerprint))
    body = problem(await http.post(url, headers={"Idempotency-Key": "c2"}), 409, "IdempotencyConflict")
    assert "in flight" in body["detail"] and body["key"] == "c2"
    assert (await _rows(kit, org))["c2"] == (fingerprint, None)  # untouched: its holder may still answer
    # Its holder died long ago (older than any request may take): the next request takes the key over and runs.
    await _sql(kit, "UPDATE http_idempotency SET created_at = now() - %s WHERE scope = %s AND key = 'c2'",
               (STALE_AFTER + timedelta(minutes=1), org))
    r = await http.post(url, headers={"Idempotency-Key": "c2"})
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers, r.text
    assert (await _rows(kit, org))["c2"] == (fingerprint, 200)


async def test_concurrent_duplicates_run_once(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    http = await client("admin", org_id=org)
    answers = await asyncio.gather(*(
        http.post(f"/v1/orgs/{org}/subscription/upgrade", json={"plan": "pro"}, headers={"Idempotency-Key": "u1"})
        for _ in range(4)))
    ran = [r for r in answers if r.status_code == 200 and "idempotent-replayed" not in r.headers]
    assert len(ran) == 1, [(r.status_code, r.text) for r in answers]
    for r in answers:
        if r is not ran[0]:  # told it is in flight, or answered the first answer
            assert r.status_code == 409 or (r.json() == ran[0].json() and r.headers["idempotent-replayed"] == "true")
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "upgrade"]


async def test_a_5xx_answer_is_not_stored_and_the_retry_runs(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    # The same database, Temporal unreachable (a refused port): every subscription change answers 503.
    away = BillingClient(kit.billing.ledger, Settings(database_url=kit.database_url,
                                                      temporal_address=f"127.0.0.1:{free_port()}"),
                         payments=kit.billing.payments)
    assert kit.api_keys is not None
    secret = await kit.api_key("admin", org_id=org)
    async with serving(create_app(away, kit.api_keys), port=0) as url, \
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as down:
        r = await down.post(f"/v1/orgs/{org}/subscription/cancel", headers={"Idempotency-Key": "k1"})
        problem(r, 503, "ServiceUnavailable")
        assert r.headers["retry-after"]
    assert "k1" not in await _rows(kit, org)
    http = await client(secret=secret)
    again = await http.post(f"/v1/orgs/{org}/subscription/cancel", headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["cancel_at_period_end"] is True, again.text
    assert (await _rows(kit, org))["k1"][1] == 200
