"""Each role's reach over every organization route: a member or admin key of one organization gets, on another that
exists, exactly the answer of one that does not (404 UnknownOrganization, nothing else to tell them apart); a member
is refused (403) all but metering as itself (credits and quotas), its balance, its own usage and limit and the
quotas; a platform key reaches all."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"
IK = {"Idempotency-Key": "reach-1"}
AI = {"action": "ai_chat", "tier": "fast"}

# (method, path under /v1/orgs/{org}, JSON body, headers): every organization route, each with a valid request.
ROUTES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", "/balance", None, {}),
    ("GET", "/usage?by=user", None, {}),
    ("GET", "/usage", None, {}),
    ("GET", "/transactions", None, {}),
    ("GET", "/invoices", None, {}),
    ("GET", "/invoices/INV-2026-000001", None, {}),
    ("GET", "/subscription", None, {}),
    ("GET", "/auto-recharge", None, {}),
    ("GET", "/users/u1/limit", None, {}),
    ("POST", "/debits", AI, IK),
    ("POST", "/holds", AI, IK),
    ("POST", "/holds/reach-1/commit", None, {}),
    ("POST", "/holds/reach-1/release", None, {}),
    ("POST", "/subscription", {"plan": "starter", "email": EMAIL}, IK),
    ("POST", "/subscription/upgrade", {"plan": "pro"}, IK),
    ("POST", "/subscription/downgrade", {"plan": "free"}, IK),
    ("POST", "/subscription/seats", {"seats": 2}, IK),
    ("POST", "/subscription/cancel", None, IK),
    ("POST", "/subscription/resume", None, IK),
    ("POST", "/subscription/retry", None, IK),
    ("POST", "/credit-purchases", {"pack": "500"}, IK),
    ("POST", "/usage-guards/ai_chat/resume", None, IK),
    ("POST", "/wallet", None, IK),
    ("PUT", "/auto-recharge", {"threshold": "10", "pack": "500"}, {}),
    ("PUT", "/users/u1/limit", {"limit": "10"}, {}),
    ("PUT", "/usage-guards/ai_chat", {"max_uses": 5}, {}),
    ("PUT", "/low-balance-alert", {"threshold": "5"}, {}),
    ("DELETE", "/users/u1/limit", None, {}),
    ("DELETE", "/usage-guards/ai_chat", None, {}),
    ("GET", "/usage/events", None, {}),
    ("GET", "/usage/summary", None, {}),
    ("GET", "/usage/series?since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z", None, {}),
    ("GET", "/usage/lifetime", None, {}),
    ("GET", "/usage/export?what=usage&format=csv", None, {}),
    ("GET", "/usage/projection", None, {}),
    ("GET", "/users/u1/usage", None, {}),
    ("GET", "/settings/runway-alert", None, {}),
    ("PUT", "/settings/runway-alert", {"enabled": True}, {}),
    ("GET", "/quotas", None, {}),
    ("POST", "/quotas/sessions/usage", {"quantity": 1}, IK),
]
# What a member key of the organization may do there (the rest is 403 Forbidden).
MEMBER_MAY = {("GET", "/balance"), ("GET", "/usage?by=user"), ("GET", "/users/u1/limit"), ("POST", "/debits"),
              ("POST", "/holds"), ("POST", "/holds/reach-1/commit"), ("POST", "/holds/reach-1/release"),
              # its own usage (the log, summary and series narrowed to its user), and quotas as it meters
              ("GET", "/usage/events"), ("GET", "/usage/summary"),
              ("GET", "/usage/series?since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z"),
              ("GET", "/users/u1/usage"), ("GET", "/quotas"), ("POST", "/quotas/sessions/usage")}


async def _send(http: httpx.AsyncClient, org: str, method: str, path: str, body: Any,
                headers: dict[str, str]) -> httpx.Response:
    return await http.request(method, f"/v1/orgs/{org}{path}", json=body, headers=headers)


@pytest.mark.parametrize("role", ["admin", "member"])
async def test_another_organization_answers_as_one_that_does_not_exist(kit: TestKit, org: str, client: Client,
                                                                      role: str) -> None:
    other = org + "-other"
    await kit.billing.subscribe(other, plan="starter", email=EMAIL)  # it exists, with everything to find
    await kit.billing.set_auto_recharge(other, threshold=Decimal(1), pack="500")
    missing = org + "-missing"
    http = await client(role, org_id=org, user_id="u1" if role == "member" else None)
    for method, path, body, headers in ROUTES:
        there = await _send(http, other, method, path, body, headers)
        nowhere = await _send(http, missing, method, path, body, headers)
        problem(there, 404, "UnknownOrganization")
        assert there.json() == {k: v.replace(missing, other) if isinstance(v, str) else v
                                for k, v in nowhere.json().items()}, (method, path)
        assert there.headers.keys() == nowhere.headers.keys(), (method, path)
    sub = await kit.billing.subscription(other)
    assert (sub.plan, sub.seats, sub.cancel_at_period_end) == ("starter", 1, False)
    assert [c.purpose for c in kit.charges(other)] == ["subscription"]


async def test_a_member_may_meter_as_itself_and_read_its_own_only(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    member = await client("member", org_id=org, user_id="u1")
    for method, path, body, headers in ROUTES:
        r = await _send(member, org, method, path, body, headers)
        if (method, path) in MEMBER_MAY:  # allowed: answered (the release of a committed hold is 409 HoldNotOpen)
            assert r.status_code not in (401, 403, 404), (method, path, r.text)
        else:
            problem(r, 403, "Forbidden")
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]
    assert (await kit.billing.subscription(org)).plan == "starter"


async def test_a_platform_key_reaches_every_organization(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    platform = await client("platform")
    for method, path in (("GET", "/balance"), ("GET", "/usage"), ("GET", "/transactions"), ("GET", "/invoices"),
                         ("GET", "/subscription"), ("GET", "/auto-recharge"), ("GET", "/users/u1/limit"),
                         ("GET", "/usage/events"), ("GET", "/usage/lifetime"), ("GET", "/usage/projection"),
                         ("GET", "/usage/export?what=transactions&format=jsonl"), ("GET", "/users/u1/usage"),
                         ("GET", "/quotas"), ("GET", "/settings/runway-alert")):
        assert (await _send(platform, org, method, path, None, {})).status_code == 200, (method, path)
    problem(await platform.get("/v1/orgs/no-such-org-at-all/balance"), 404, "UnknownOrganization")
