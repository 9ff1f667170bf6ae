"""Clients of the kit's live API (real HTTP, kit.api_url) with a key of each role, and the problem check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from models.api_types import Role
from testkit import TestKit

Client = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def client(kit: TestKit) -> AsyncIterator[Client]:
    """`await client("admin", org_id="acme")`: an HTTP client of the kit's API with a new key of that role."""
    async with AsyncExitStack() as stack:
        async def make(role: Role = "platform", org_id: str | None = None, user_id: str | None = None,
                       secret: str | None = None) -> httpx.AsyncClient:
            secret = secret or await kit.api_key(role, org_id=org_id, user_id=user_id)
            return await stack.enter_async_context(httpx.AsyncClient(
                base_url=kit.api_url, headers={"Authorization": f"Bearer {secret}"}, timeout=180))
        yield make


def problem(r: httpx.Response, status: int, type_name: str) -> dict[str, Any]:
    """The answer's problem body, once it is the problem expected (RFC 9457, type ending with the error's name)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert body["type"] == f"https://billing-engine.dev/problems/{type_name}", body
    assert body["title"] == type_name and body["status"] == status and body["detail"], body
    return body
