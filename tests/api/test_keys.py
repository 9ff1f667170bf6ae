"""API keys over real HTTP: who creates what, lists without secrets, revocation (401 at once), 401 without a key,
and an Idempotency-Key replay of a creation that never shows the secret again."""

from __future__ import annotations

import httpx
import psycopg

from testkit import TestKit
from tests.api.conftest import Client, problem


async def test_who_creates_which_keys(kit: TestKit, org: str, client: Client) -> None:
    platform = await client("platform")
    r = await platform.post("/v1/api-keys", json={"role": "admin", "org_id": org, "name": "ops"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["role"], created["org_id"], created["user_id"], created["name"]) == ("admin", org, None, "ops")
    assert created["key"].startswith("bk_") and created["key"].startswith(created["prefix"])
    admin = await client(secret=created["key"])
    assert (await admin.get("/v1/whoami")).json() == {"key_id": created["id"], "role": "admin", "org_id": org,
                                                      "user_id": None}
    member = await admin.post("/v1/api-keys", json={"role": "member", "org_id": org, "user_id": "u1"})
    assert member.status_code == 201 and member.json()["created_by"] == created["id"], member.text
    problem(await admin.post("/v1/api-keys", json={"role": "platform"}), 403, "Forbidden")
    problem(await admin.post("/v1/api-keys", json={"role": "admin", "org_id": org + "-b"}), 404, "UnknownOrganization")
    problem(await admin.post("/v1/api-keys", json={"role": "member", "org_id": org}), 422, "InvalidRequest")
    problem(await admin.post("/v1/api-keys", json={"role": "root", "org_id": org}), 422, "InvalidRequest")
    problem(await platform.post("/v1/api-keys", json={"role": "platform", "org_id": org}), 422, "InvalidRequest")
    as_member = await client(secret=member.json()["key"])
    problem(await as_member.post("/v1/api-keys", json={"role": "member", "org_id": org, "user_id": "u2"}),
            403, "Forbidden")
    problem(await as_member.get("/v1/api-keys"), 403, "Forbidden")


async def test_lists_show_no_secret_and_stay_within_reach(kit: TestKit, org: str, client: Client) -> None:
    admin = await client("admin", org_id=org)
    await kit.api_key("member", org_id=org, user_id="u1")
    await kit.api_key("admin", org_id=org + "-b")
    listed = (await admin.get("/v1/api-keys")).json()["keys"]
    assert [(k["role"], k["org_id"]) for k in listed] == [("admin", org), ("member", org)]
    assert all("key" not in k and k["prefix"].startswith("bk_") for k in listed)
    assert (await admin.get("/v1/api-keys", params={"org_id": org})).json()["keys"] == listed
    problem(await admin.get("/v1/api-keys", params={"org_id": org + "-b"}), 404, "UnknownOrganization")
    platform = await client("platform")
    other = (await platform.get("/v1/api-keys", params={"org_id": org + "-b"})).json()["keys"]
    assert [(k["role"], k["org_id"]) for k in other] == [("admin", org + "-b")]


async def test_a_revoked_key_is_refused_at_once(kit: TestKit, org: str, client: Client) -> None:
    admin = await client("admin", org_id=org)
    secret = await kit.api_key("member", org_id=org, user_id="u1")
    member = await client(secret=secret)
    assert (await member.get("/v1/whoami")).status_code == 200
    key_id = (await member.get("/v1/whoami")).json()["key_id"]
    revoked = await admin.delete(f"/v1/api-keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"].endswith("Z"), revoked.text
    r = problem(await member.get(f"/v1/orgs/{org}/balance"), 401, "NotAuthenticated")
    assert r["detail"]
    assert (await admin.delete(f"/v1/api-keys/{key_id}")).json() == revoked.json()  # a repeat answers the same
    stranger = await client("admin", org_id=org + "-b")
    problem(await stranger.delete(f"/v1/api-keys/{(await admin.get('/v1/whoami')).json()['key_id']}"), 404,
            "UnknownApiKey")
    problem(await admin.delete("/v1/api-keys/key_0000000000000000"), 404, "UnknownApiKey")


async def test_no_key_or_a_wrong_one_is_401(kit: TestKit) -> None:
    async with httpx.AsyncClient(base_url=kit.api_url) as anonymous:
        r = await anonymous.get("/v1/orgs/acme/balance")
        problem(r, 401, "NotAuthenticated")
        assert r.headers["www-authenticate"] == "Bearer"
        problem(await anonymous.post("/v1/orgs/acme/debits", json={"action": "ai_chat"},
                                     headers={"Idempotency-Key": "k"}), 401, "NotAuthenticated")
        for wrong in ("Bearer bk_not-a-key", "Bearer", "Basic dXNlcjpwYXNz", "bk_no_scheme"):
            problem(await anonymous.get("/v1/whoami", headers={"Authorization": wrong}), 401, "NotAuthenticated")


async def test_a_key_creation_replayed_never_shows_the_secret_again(kit: TestKit, org: str, client: Client) -> None:
    platform = await client("platform")
    body = {"role": "member", "org_id": org, "user_id": "u9"}
    first = await platform.post("/v1/api-keys", json=body, headers={"Idempotency-Key": "new-member"})
    assert first.status_code == 201 and first.json()["key"], first.text
    again = await platform.post("/v1/api-keys", json=body, headers={"Idempotency-Key": "new-member"})
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() | {"key": None}
    assert len((await platform.get("/v1/api-keys", params={"org_id": org})).json()["keys"]) == 1
    problem(await platform.post("/v1/api-keys", json=body | {"user_id": "u8"},
                                headers={"Idempotency-Key": "new-member"}), 409, "IdempotencyConflict")
    async with await psycopg.AsyncConnection.connect(kit.database_url) as conn:
        stored = await (await conn.execute("SELECT body FROM http_idempotency WHERE scope = %s AND key = %s",
                                           (org, "new-member"))).fetchone()
    assert stored is not None and first.json()["key"].encode() not in bytes(stored[0])
