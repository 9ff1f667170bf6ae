"""The webhook API's rules of reach and its refusals: an admin key sees and changes its own organization's
endpoints and events only (another's is 404, as one that does not exist), a member key none (403); bad input
is a typed 422 that writes nothing; a repeated POST under its Idempotency-Key registers one endpoint."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from models.errors import UsageGuardPaused
from testkit import TestKit
from tests.webhooks.conftest import Register
from tests.webhooks.receiver import Receiver


def _client(kit: TestKit, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {secret}"})


def _count_endpoints(kit: TestKit) -> int:
    with psycopg.connect(kit.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_endpoints").fetchone()
    assert row is not None
    return int(row[0])


async def test_an_admin_reaches_its_own_organizations_endpoints_and_events_only(
    kit: TestKit, org: str, receiver: Receiver, register: Register
) -> None:
    mine, theirs = f"{org}-a", f"{org}-b"
    for o in (mine, theirs):
        await kit.billing.open_wallet(o)
    admin = await kit.api_key("admin", org_id=mine)
    member = await kit.api_key("member", org_id=mine, user_id="u1")
    own = await register("own", ["usage_guard.paused"], key=admin)           # org_id: the admin's, by default
    assert own["org_id"] == mine and own["secret"].startswith("whsec_")
    other = await register("other", ["usage_guard.paused"], org_id=theirs)   # a platform key's
    everyone = await register("all", ["usage_guard.paused"])                 # platform-wide
    assert everyone["org_id"] is None
    for o in (mine, theirs):
        await kit.billing.set_usage_guard(o, "ai_chat", max_uses=1, window=timedelta(hours=1))
        await kit.billing.debit(o, action="ai_chat", tier="fast", idempotency_key="1")
        with pytest.raises(UsageGuardPaused):
            await kit.billing.debit(o, action="ai_chat", tier="fast", idempotency_key="2")  # usage_guard.paused

    async with _client(kit, admin) as http:
        listed = (await http.get("/v1/webhook-endpoints")).json()["data"]
        assert [e["id"] for e in listed] == [own["id"]] and "secret" not in listed[0]
        for path in (f"/v1/webhook-endpoints/{other['id']}", f"/v1/webhook-endpoints/{everyone['id']}",
                     f"/v1/webhook-endpoints/{other['id']}/secret"):
            r = await http.get(path)
            assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", (path, r.text)
        assert (await http.delete(f"/v1/webhook-endpoints/{other['id']}")).status_code == 404
        assert (await http.post(f"/v1/webhook-endpoints/{other['id']}/enable")).status_code == 404
        assert (await http.get("/v1/webhook-endpoints", params={"org_id": theirs})).status_code == 404
        r = await http.post("/v1/webhook-endpoints", json={"url": f"{receiver.url}/x", "events": ["invoice.issued"],
                                                            "org_id": theirs})
        assert r.status_code == 404 and r.json()["type"].endswith("/UnknownOrganization"), r.text
        assert (await http.get(f"/v1/webhook-endpoints/{own['id']}/secret")).json()["secret"] == own["secret"]
        events = (await http.get("/v1/events", params={"limit": 1000})).json()["data"]
        assert events and {e["org_id"] for e in events} == {mine}
        assert (await http.get("/v1/events", params={"org_id": theirs})).status_code == 404
    async with _client(kit, member) as http:
        for method, path in (("GET", "/v1/webhook-endpoints"), ("GET", "/v1/events"),
                             ("GET", f"/v1/webhook-endpoints/{own['id']}"),
                             ("POST", "/v1/webhook-endpoints")):
            r = await http.request(method, path, json={"url": f"{receiver.url}/x", "events": ["invoice.issued"]}
                                   if method == "POST" else None)
            assert r.status_code == 403 and r.json()["type"].endswith("/Forbidden"), (path, r.text)
    platform = await kit.api_key("platform")
    async with _client(kit, platform) as http:
        theirs_events = (await http.get("/v1/events", params={"org_id": theirs, "limit": 1000})).json()["data"]
        assert theirs_events and {e["org_id"] for e in theirs_events} == {theirs}

    await kit.settle()
    # Each endpoint got its reach's events: its organization's, or (platform-wide) both.
    assert [(p["org_id"], p["type"], p["data"]["action"]) for p in receiver.acked("own")] == \
        [(mine, "usage_guard.paused", "ai_chat")]
    assert [p["org_id"] for p in receiver.acked("other")] == [theirs]
    assert [p["org_id"] for p in receiver.acked("all") if p["org_id"] in (mine, theirs)] == [mine, theirs]


@pytest.mark.parametrize(("body", "why"), [
    ({"url": "ftp://example.com/x", "events": ["invoice.issued"]}, "http(s)"),
    ({"url": "https://user:pw@example.com/x", "events": ["invoice.issued"]}, "credentials"),
    ({"url": "https://example.com/\x00", "events": ["invoice.issued"]}, "control characters"),
    ({"url": "https://example.com/x", "events": ["invoice.voided"]}, "invoice.voided"),
    ({"url": "https://example.com/x", "events": []}, "events"),
    ({"url": "https://example.com/x", "events": ["invoice.issued"], "owner_email": "nope"}, "email address"),
    ({"url": "https://example.com/x", "events": ["invoice.issued"], "org_id": "no-such-org-anywhere"}, "unknown"),
    ({"url": "https://example.com/x", "events": ["invoice.issued"], "colour": "red"}, "colour"),
])
async def test_a_bad_endpoint_is_refused_typed_and_writes_nothing(kit: TestKit, body: dict[str, Any],
                                                                   why: str) -> None:
    before = _count_endpoints(kit)
    async with _client(kit, await kit.api_key("platform")) as http:
        r = await http.post("/v1/webhook-endpoints", json=body)
    assert r.status_code in (404, 422) and r.headers["content-type"] == "application/problem+json", r.text
    assert why.lower() in r.text.lower(), r.text
    assert _count_endpoints(kit) == before


async def test_a_repeated_create_under_its_idempotency_key_registers_one_endpoint(
    kit: TestKit, org: str, receiver: Receiver
) -> None:
    await kit.billing.open_wallet(org)
    before = _count_endpoints(kit)
    body = {"url": f"{receiver.url}/idem", "events": ["invoice.issued"], "org_id": org}
    async with _client(kit, await kit.api_key("platform")) as http:
        first = await http.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "hook-1"})
        again = await http.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "hook-1"})
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert again.json()["secret"] is None  # shown once; GET .../secret reads it
        secret = (await http.get(f"/v1/webhook-endpoints/{first.json()['id']}/secret")).json()["secret"]
        assert secret == first.json()["secret"]
        other = await http.post("/v1/webhook-endpoints", json={**body, "events": ["payment.failed"]},
                                headers={"Idempotency-Key": "hook-1"})
        assert other.status_code == 409
        assert (await http.delete(f"/v1/webhook-endpoints/{first.json()['id']}")).status_code == 204
        assert (await http.delete(f"/v1/webhook-endpoints/{first.json()['id']}")).status_code == 404
    assert _count_endpoints(kit) == before + 1
