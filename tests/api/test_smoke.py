"""The API's first path over real HTTP: a key, a debit, its replay, a refusal as problem+json."""

from __future__ import annotations

import httpx

from testkit import TestKit


async def test_debit_through_http(kit: TestKit) -> None:
    await kit.billing.open_wallet("api-smoke")
    secret = await kit.api_key("admin", org_id="api-smoke")
    async with httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {secret}"}) as http:
        r = await http.post("/v1/orgs/api-smoke/debits", json={"action": "ai_chat", "tier": "fast"},
                            headers={"Idempotency-Key": "m1"})
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["replayed"] is False and isinstance(first["available"], str)
        again = await http.post("/v1/orgs/api-smoke/debits", json={"action": "ai_chat", "tier": "fast"},
                                headers={"Idempotency-Key": "m1"})
        assert again.json()["replayed"] is True and again.json()["cost"] == first["cost"]
        other = await http.get("/v1/orgs/someone-else/balance")
        assert other.status_code == 404
        assert other.headers["content-type"] == "application/problem+json"
        assert other.json()["type"].endswith("/UnknownOrganization")
        anon = await http.get("/v1/whoami", headers={"Authorization": "Bearer nope"})
        assert anon.status_code == 401
