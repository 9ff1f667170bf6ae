"""Quotas over real HTTP (api/routes/quotas.py): records counted once per Idempotency-Key, a hard limit refusing
the record that would pass it (403 QuotaExceeded, nothing counted), a soft one counting past it, the usage bars
with their 80% warning, every key of the organization recording and reading, and bad requests refused (422) with
nothing counted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"


async def _record(http: httpx.AsyncClient, org: str, quota: str, key: str, quantity: Any = None) -> httpx.Response:
    body = None if quantity is None else {"quantity": quantity}
    return await http.post(f"/v1/orgs/{org}/quotas/{quota}/usage", json=body, headers={"Idempotency-Key": key})


async def _bars(http: httpx.AsyncClient, org: str) -> dict[str, tuple[Any, ...]]:
    r = await http.get(f"/v1/orgs/{org}/quotas")
    assert r.status_code == 200, r.text
    return {q["quota"]: (Decimal(q["used"]), q["limit"], q["percent"], q["warning"], q["exceeded"])
            for q in r.json()["quotas"]}


async def test_a_hard_limit_refuses_the_record_that_would_pass_it(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)  # free: enrichments 10 a UTC day, hard
    http = await client("admin", org_id=org)
    r = await _record(http, org, "enrichments", "r1", 3)
    assert r.status_code == 201, r.text
    assert r.json() == {"org_id": org, "quota": "enrichments", "idempotency_key": "r1", "quantity": "3", "used": "3",
                        "limit": "10", "hard": True, "replayed": False, "warning": False}
    again = await _record(http, org, "enrichments", "r1", "3")
    assert again.status_code == 201 and again.json()["replayed"] is True and Decimal(again.json()["used"]) == 3
    problem(await _record(http, org, "enrichments", "r1", 4), 409, "IdempotencyConflict")
    problem(await _record(http, org, "sessions", "r1", 3), 409, "IdempotencyConflict")

    r = await _record(http, org, "enrichments", "r2", 5)
    assert (Decimal(r.json()["used"]), r.json()["warning"]) == (Decimal(8), True)  # 80%: amber
    refused = problem(await _record(http, org, "enrichments", "r3", 3), 403, "QuotaExceeded")
    assert {k: refused[k] for k in ("org_id", "quota", "limit", "used", "quantity")} == {
        "org_id": org, "quota": "enrichments", "limit": "10", "used": "8", "quantity": "3"}
    assert (await _bars(http, org))["enrichments"] == (8, "10", 80, True, False)  # nothing counted

    r = await _record(http, org, "enrichments", "r4")  # no body: one
    assert r.status_code == 201 and r.json()["quantity"] == "1" and Decimal(r.json()["used"]) == 9
    r = await _record(http, org, "enrichments", "r3", 1)  # a refused key wrote nothing: free for another record
    assert r.status_code == 201 and Decimal(r.json()["used"]) == 10
    problem(await _record(http, org, "enrichments", "r5"), 403, "QuotaExceeded")
    await _record(http, org, "storage", "s1", "0.25")
    # Each threshold's event once this period, written with the record that crossed it (refusals and repeats add none).
    events = (await http.get("/v1/events", params={"org_id": org})).json()["data"]
    assert [(e["type"], e["data"]["quota"], e["data"]["percent"]) for e in events if e["type"].startswith("quota.")
            ] == [("quota.usage_80", "enrichments", 80), ("quota.usage_100", "enrichments", 100)]
    today = datetime.fromisoformat((await http.get(f"/v1/orgs/{org}/quotas")).json()["quotas"][0]["period_start"])
    assert today == kit.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert await _bars(http, org) == {
        "sessions": (0, "100", 0, False, False), "events": (0, "1000", 0, False, False),
        "enrichments": (10, "10", 100, True, True), "storage": (Decimal("0.25"), "0.5", 50, False, False)}


async def test_a_soft_limit_counts_past_it(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)  # sessions 5,000 a month, soft
    http = await client("platform")
    r = await _record(http, org, "sessions", "a", 4000)
    assert (r.json()["hard"], r.json()["warning"], r.json()["limit"]) == (False, True, "5000")
    r = await _record(http, org, "sessions", "b", 1001)
    assert r.status_code == 201 and Decimal(r.json()["used"]) == 5001
    bars = await _bars(http, org)
    assert bars["sessions"] == (5001, "5000", 100, True, True)
    assert bars["enrichments"] == (0, "500", 0, False, False)
    quotas = (await http.get(f"/v1/orgs/{org}/quotas")).json()["quotas"]
    sub = await kit.billing.subscription(org)
    assert sub.period_start is not None
    assert {q["period_start"] for q in quotas} == {sub.period_start.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    assert [(q["quota"], q["hard"]) for q in quotas] == [
        ("sessions", False), ("events", True), ("enrichments", True), ("storage", True)]


async def test_any_key_of_the_organization_records_and_reads_none_beyond(kit: TestKit, org: str,
                                                                         client: Client) -> None:
    await kit.billing.open_wallet(org)
    member = await client("member", org_id=org, user_id="u1")
    assert (await _record(member, org, "events", "m1", 2)).status_code == 201
    assert (await _bars(member, org))["events"] == (2, "1000", 0, False, False)
    other = org + "-other"
    await kit.billing.open_wallet(other)
    for http in (member, await client("admin", org_id=org)):
        for target in (other, org + "-missing"):
            problem(await _record(http, target, "events", "x1"), 404, "UnknownOrganization")
            problem(await http.get(f"/v1/orgs/{target}/quotas"), 404, "UnknownOrganization")
    platform = await client("platform")
    problem(await _record(platform, org + "-missing", "events", "x1"), 404, "UnknownOrganization")
    problem(await platform.get(f"/v1/orgs/{org}-missing/quotas"), 404, "UnknownOrganization")
    assert (await _bars(platform, other))["events"][0] == 0


async def test_bad_records_are_refused_and_count_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/quotas/events/usage"
    for i, quantity in enumerate([0, -1, "abc", "1.2345", "1e20", "NaN", "Infinity", True, [], {"n": 1}]):
        problem(await _record(http, org, "events", f"bad-{i}", quantity), 422, "InvalidRequest")
    problem(await http.post(url, json={"quantity": 1, "colour": "red"}, headers={"Idempotency-Key": "k"}),
            422, "InvalidRequest")  # an unknown member
    problem(await http.post(url, json={"quantity": 1}), 422, "InvalidRequest")  # no Idempotency-Key
    problem(await http.post(url, json={"quantity": 1}, headers={"Idempotency-Key": "-bad"}), 422, "InvalidRequest")
    problem(await http.post(url, json={"quantity": 1}, headers={"Idempotency-Key": "k" * 201}), 422,
            "InvalidRequest")
    problem(await http.post(url, content=b"{not json", headers={"Idempotency-Key": "k",
                                                                 "content-type": "application/json"}),
            422, "InvalidRequest")
    for quota in ("widgets", "Sessions", "a:b"):
        problem(await _record(http, org, quota, "q1"), 422, "InvalidRequest")
    assert all(used == 0 for used, *_ in (await _bars(http, org)).values())
    assert (await _record(http, org, "events", "k")).status_code == 201  # the keys refused above wrote nothing
