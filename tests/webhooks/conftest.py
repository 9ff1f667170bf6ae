"""What the webhook tests share: a real receiver (receiver.py) and endpoints registered over the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import psycopg
import pytest

from testkit import TestKit
from tests.webhooks.receiver import Receiver

Register = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
async def register(kit: TestKit, receiver: Receiver) -> AsyncIterator[Register]:
    """Register an endpoint at the receiver's `/{path}` (a platform key unless `secret` is given); each is
    deleted when the test ends, so the shared kit delivers nothing more to a receiver that is gone."""
    made: list[str] = []
    platform = await kit.api_key("platform")

    async def make(path: str, events: list[str], *, org_id: str | None = None, key: str | None = None,
                   **extra: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=kit.api_url,
                                     headers={"Authorization": f"Bearer {key or platform}"}) as http:
            r = await http.post("/v1/webhook-endpoints", json={"url": f"{receiver.url}/{path}", "events": events,
                                                              "org_id": org_id, **extra})
        assert r.status_code == 201, r.text
        endpoint: dict[str, Any] = r.json()
        receiver.secrets[path] = endpoint["secret"]
        made.append(endpoint["id"])
        return endpoint

    yield make
    async with httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {platform}"}) as http:
        for endpoint_id in made:
            await http.delete(f"/v1/webhook-endpoints/{endpoint_id}")


def db_events(kit: TestKit, org_id: str) -> list[tuple[int, str, str]]:
    """(seq, id, type) of the organization's events, in seq order."""
    with psycopg.connect(kit.database_url) as conn:
        rows = conn.execute("SELECT seq, id, type FROM events WHERE org_id = %s ORDER BY seq", (org_id,)).fetchall()
    return [(int(s), str(i), str(t)) for s, i, t in rows]


def endpoint_row(kit: TestKit, endpoint_id: str) -> dict[str, Any]:
    with psycopg.connect(kit.database_url) as conn:
        cur = conn.execute("SELECT * FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([c.name for c in cur.description], row, strict=True))
