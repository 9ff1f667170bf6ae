"""The committed spec (docs/openapi.json) is what the API serves, OpenAPI 3.1, and every operation documents its
refusals as problem+json."""

from __future__ import annotations

import json
from typing import Any

import httpx

from api.openapi import REGENERATE
from settings import ROOT
from testkit import TestKit

SPEC = ROOT / "docs" / "openapi.json"


async def _served(kit: TestKit) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=kit.api_url) as http:
        spec: dict[str, Any] = (await http.get("/v1/openapi.json")).raise_for_status().json()
    return spec


async def test_the_committed_spec_is_the_served_one(kit: TestKit) -> None:
    served = await _served(kit)
    committed = json.loads(SPEC.read_text())
    assert committed == served, f"docs/openapi.json is out of date: regenerate it with `{REGENERATE}`"


async def test_every_operation_is_authenticated_and_documents_its_problems(kit: TestKit) -> None:
    spec = await _served(kit)
    assert spec["openapi"].startswith("3.1")
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(operations) >= 30
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("security") == [{"HTTPBearer": []}], where
        refusals = {status: r for status, r in op["responses"].items() if int(status) >= 400}
        assert {"401", "422", "503"} <= refusals.keys(), where
        for status, response in refusals.items():
            assert list(response["content"]) == ["application/problem+json"], (where, status)
            assert response["content"]["application/problem+json"]["schema"] == \
                {"$ref": "#/components/schemas/Problem"}, (where, status)
        if path.startswith("/v1/orgs/{org_id}"):
            assert "404" in refusals, where  # another organization's, or none
