"""A debit through HTTP is still one database round trip (issue 11): the key is authenticated from the
server's cache, and the debit is the ledger's one statement. Counted on the real pool the API serves from."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ledger.pool import LeanPool
from testkit import TestKit


async def test_a_debit_through_http_is_one_statement_on_the_database(kit: TestKit,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    await kit.billing.open_wallet("api-one-trip")
    secret = await kit.api_key("admin", org_id="api-one-trip")
    statements: list[str] = []
    real = LeanPool.fetchall

    async def counted(self: LeanPool, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        statements.append(sql)
        return await real(self, sql, params)

    async with httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert (await http.get("/v1/whoami")).status_code == 200  # the key is now in the server's cache
        monkeypatch.setattr(LeanPool, "fetchall", counted)
        r = await http.post("/v1/orgs/api-one-trip/debits", json={"action": "ai_chat", "tier": "fast"},
                            headers={"Idempotency-Key": "one-trip-1"})
        assert r.status_code == 201, r.text
        assert len(statements) == 1 and "ledger_debit" in statements[0], statements
        # The first use of a key is one more read (then cached): counted so the cache is proven, not assumed.
        statements.clear()
        other = await kit.api_key("admin", org_id="api-one-trip")
        r = await http.post("/v1/orgs/api-one-trip/debits", json={"action": "ai_chat", "tier": "fast"},
                            headers={"Idempotency-Key": "one-trip-2", "Authorization": f"Bearer {other}"})
        assert r.status_code == 201, r.text
        assert len(statements) == 3 and "api_keys" in statements[1], statements  # create, authenticate, debit
