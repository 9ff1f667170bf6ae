"""An organization's controls over real HTTP: auto-recharge, per-user limits (a member's own limit, used and
remaining), usage guards and their resume, the low-balance alert, opening a wallet; who may set them."""

from __future__ import annotations

from decimal import Decimal

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"
AI = {"action": "ai_chat", "tier": "fast"}  # 1 credit


async def test_auto_recharge_settings(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/auto-recharge"
    assert (await http.get(url)).json() == {"org_id": org, "configured": False, "enabled": False, "threshold": None,
                                            "pack": None, "credits": None, "spending_limit_cents": None,
                                            "currency": "EUR", "disabled_reason": None}
    r = await http.put(url, json={"threshold": "100", "pack": "500", "spending_limit_cents": 10000})
    assert r.status_code == 200, r.text
    expected = {"org_id": org, "configured": True, "enabled": True, "threshold": "100.000", "pack": "500",
                "credits": None, "spending_limit_cents": 10000, "currency": "EUR", "disabled_reason": None}
    assert r.json() == expected and (await http.get(url)).json() == expected
    off = await http.put(url, json={"threshold": "100", "pack": "500", "enabled": False})
    assert off.json()["enabled"] is False and off.json()["spending_limit_cents"] == 5000
    problem(await http.put(url, json={"threshold": "100", "pack": "750"}), 422, "InvalidRequest")
    problem(await http.put(url, json={"threshold": "-1", "pack": "500"}), 422, "InvalidRequest")
    problem(await http.get("/v1/orgs/nobody-at-all/auto-recharge"), 404, "UnknownOrganization")


async def test_user_limits_and_a_members_view_of_its_own(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    admin = await client("admin", org_id=org)
    member = await client("member", org_id=org, user_id="u1")
    url = f"/v1/orgs/{org}/users/u1/limit"
    none = (await member.get(url)).json()
    assert (none["limit"], none["source"], none["used"], none["remaining"]) == (None, None, "0.000", None)
    r = await admin.put(url, json={"limit": "5"})
    assert r.status_code == 200 and (r.json()["limit"], r.json()["source"]) == ("5.000", "user"), r.text
    for key in ("m1", "m2", "m3"):
        assert (await member.post(f"/v1/orgs/{org}/debits", json=AI, headers={"Idempotency-Key": key})).status_code \
            == 201
    mine = (await member.get(url)).json()
    assert (mine["limit"], mine["used"], mine["remaining"]) == ("5.000", "3.000", "2.000")
    assert mine["period_start"].endswith("Z") and mine["period_end"].endswith("Z")
    body = problem(await member.post(f"/v1/orgs/{org}/debits", json=AI | {"quantity": 3},
                                     headers={"Idempotency-Key": "m4"}), 403, "UserLimitExceeded")
    assert (body["limit"], body["used"], body["cost"], body["user_id"]) == ("5.000", "3.000", "3.000", "u1")

    problem(await member.get(f"/v1/orgs/{org}/users/u2/limit"), 403, "Forbidden")
    problem(await member.put(url, json={"limit": "500"}), 403, "Forbidden")
    problem(await member.delete(url), 403, "Forbidden")
    problem(await admin.put(url, json={"limit": "-1"}), 422, "InvalidRequest")

    assert (await admin.put(f"/v1/orgs/{org}/users/*/limit", json={"limit": "10"})).status_code == 200
    gone = (await admin.delete(url)).json()
    assert (gone["limit"], gone["source"], gone["remaining"]) == ("10.000", "default", "7.000")
    assert (await admin.delete(f"/v1/orgs/{org}/users/*/limit")).json()["limit"] is None


async def test_a_usage_guard_pauses_an_action_until_resumed(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/usage-guards/ai_chat"
    r = await http.put(url, json={"max_uses": 2, "window_seconds": 3600})
    assert r.json() == {"org_id": org, "action": "ai_chat", "max_uses": 2, "window_seconds": 3600}, r.text
    for key in ("g1", "g2"):
        assert (await http.post(f"/v1/orgs/{org}/debits", json=AI, headers={"Idempotency-Key": key})).status_code \
            == 201
    paused = await http.post(f"/v1/orgs/{org}/debits", json=AI, headers={"Idempotency-Key": "g3"})
    assert problem(paused, 429, "UsageGuardPaused")["action"] == "ai_chat" and paused.headers["retry-after"]
    # The admin raises the guard and resumes. (A resume alone, within the window that paused it, pauses again at
    # the next use: the window's count stays, ledger_check.sql.)
    assert (await http.put(url, json={"max_uses": 10})).status_code == 200
    resumed = await http.post(f"{url}/resume", headers={"Idempotency-Key": "resume-1"})
    assert resumed.json() == {"org_id": org, "action": "ai_chat", "was_paused": True}
    replay = await http.post(f"{url}/resume", headers={"Idempotency-Key": "resume-1"})
    assert replay.json()["was_paused"] is True and replay.headers["idempotent-replayed"] == "true"
    assert (await http.post(f"{url}/resume")).json()["was_paused"] is False
    assert (await http.post(f"/v1/orgs/{org}/debits", json=AI, headers={"Idempotency-Key": "g4"})).status_code == 201
    assert (await http.delete(url)).json()["max_uses"] is None
    problem(await http.put(url, json={"max_uses": 0}), 422, "InvalidRequest")
    problem(await http.put(url, json={"max_uses": 1, "window_seconds": 10**12}), 422, "InvalidRequest")
    problem(await http.put(f"/v1/orgs/{org}/usage-guards/teleport", json={"max_uses": 1}), 422, "InvalidRequest")


async def test_low_balance_alert_and_opening_a_wallet(kit: TestKit, org: str, client: Client) -> None:
    http = await client("platform")
    r = await http.post(f"/v1/orgs/{org}/wallet", headers={"Idempotency-Key": "open-1"})
    assert (r.status_code, r.json()) == (201, {"org_id": org, "available": "50.000", "replayed": False}), r.text
    assert (await http.post(f"/v1/orgs/{org}/wallet", json={"plan": "free"})).json()["replayed"] is True
    problem(await http.post(f"/v1/orgs/{org}-b/wallet", json={"plan": "pro"}), 422, "InvalidRequest")
    url = f"/v1/orgs/{org}/low-balance-alert"
    assert (await http.put(url, json={"threshold": "10"})).json() == {"org_id": org, "threshold": "10"}
    assert (await http.put(url, json={"threshold": None})).json()["threshold"] is None
    problem(await http.put(url, json={"threshold": "-5"}), 422, "InvalidRequest")
    problem(await http.put("/v1/orgs/nobody-at-all/low-balance-alert", json={"threshold": "1"}), 404,
            "UnknownOrganization")
    assert (await kit.billing.balance(org)).available == Decimal(50)


async def test_a_member_sets_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    member = await client("member", org_id=org, user_id="u1")
    base = f"/v1/orgs/{org}"
    problem(await member.get(f"{base}/auto-recharge"), 403, "Forbidden")
    problem(await member.put(f"{base}/auto-recharge", json={"threshold": "1", "pack": "500"}), 403, "Forbidden")
    problem(await member.put(f"{base}/usage-guards/ai_chat", json={"max_uses": 1}), 403, "Forbidden")
    problem(await member.delete(f"{base}/usage-guards/ai_chat"), 403, "Forbidden")
    problem(await member.post(f"{base}/usage-guards/ai_chat/resume"), 403, "Forbidden")
    problem(await member.put(f"{base}/low-balance-alert", json={"threshold": "1"}), 403, "Forbidden")
    problem(await member.post(f"{base}/wallet"), 403, "Forbidden")
    assert await kit.billing.auto_recharge(org) is None
