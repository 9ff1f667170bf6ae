"""Metering over real HTTP: debits and holds with the engine's own idempotency keys, each refusal with its exact
status and problem type, a member metering only as itself, a hold that crosses the auto-recharge threshold."""

from __future__ import annotations

from decimal import Decimal

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"
AI = {"action": "ai_chat", "tier": "fast"}  # 1 credit


async def test_a_debit_charges_once_and_its_repeat_answers_the_first(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    r = await http.post(f"/v1/orgs/{org}/debits", json={**AI, "quantity": "2.5"},
                        headers={"Idempotency-Key": "d1"})
    assert r.status_code == 201, r.text
    assert r.json() == {"org_id": org, "idempotency_key": "d1", "cost": "2.500", "available": "47.500",
                        "replayed": False}
    again = await http.post(f"/v1/orgs/{org}/debits", json={"quantity": "2.5", "tier": "fast", "action": "ai_chat"},
                            headers={"Idempotency-Key": "d1"})
    assert again.status_code == 201 and again.json()["replayed"] is True and again.json()["cost"] == "2.500"
    body = problem(await http.post(f"/v1/orgs/{org}/debits", json=AI,
                                   headers={"Idempotency-Key": "d1"}), 409, "IdempotencyConflict")
    assert body["key"] == "d1" and body["org_id"] == org
    assert (await kit.billing.balance(org)).available == Decimal("47.5")


async def test_debit_refusals_are_typed_problems_and_change_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("platform")
    url = f"/v1/orgs/{org}/debits"
    body = problem(await http.post(url, json={**AI, "quantity": 51}, headers={"Idempotency-Key": "a"}),
                   403, "InsufficientCredits")
    assert (body["cost"], body["available"]) == ("51.000", "50.000")  # the error's fields, credits as strings
    problem(await http.post(url, json={"action": "ai_chat", "tier": "smart"}, headers={"Idempotency-Key": "b"}),
            403, "TierNotAvailable")
    problem(await http.post(url, json={"action": "no_such_action"}, headers={"Idempotency-Key": "c"}),
            422, "InvalidRequest")
    problem(await http.post(url, json={**AI, "colour": "red"}, headers={"Idempotency-Key": "d"}),
            422, "InvalidRequest")  # an unknown member is refused, not ignored
    problem(await http.post(url, json=AI), 422, "InvalidRequest")  # no Idempotency-Key
    problem(await http.post(url, content=b"{not json", headers={"Idempotency-Key": "e",
                                                                 "content-type": "application/json"}),
            422, "InvalidRequest")
    problem(await http.post("/v1/orgs/nobody-here/debits", json=AI,
                            headers={"Idempotency-Key": "f"}), 404, "UnknownOrganization")
    assert (await kit.billing.balance(org)).available == Decimal(50)
    assert await kit.billing.transactions(org) == [t for t in await kit.billing.transactions(org) if t.kind == "grant"]


async def test_a_member_meters_as_itself_only(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    member = await client("member", org_id=org, user_id="u1")
    r = await member.post(f"/v1/orgs/{org}/debits", json=AI, headers={"Idempotency-Key": "m1"})
    assert r.status_code == 201, r.text
    named = await member.post(f"/v1/orgs/{org}/debits", json={**AI, "user_id": "u1"},
                              headers={"Idempotency-Key": "m2"})
    assert named.status_code == 201, named.text
    problem(await member.post(f"/v1/orgs/{org}/debits", json={**AI, "user_id": "u2"},
                              headers={"Idempotency-Key": "m3"}), 403, "Forbidden")
    problem(await member.post(f"/v1/orgs/{org}/holds", json={**AI, "user_id": "u2"},
                              headers={"Idempotency-Key": "h1"}), 403, "Forbidden")
    usage = await kit.billing.usage(org, by="user")
    assert [(u.key, u.uses) for u in usage] == [("u1", 2)]


async def test_a_hold_commits_or_releases_once(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)  # 3,000 credits, 5 open holds at most
    http = await client("admin", org_id=org)
    r = await http.post(f"/v1/orgs/{org}/holds", json={"action": "credit_score", "ttl_seconds": 600},
                        headers={"Idempotency-Key": "h1"})
    assert r.status_code == 201, r.text
    assert r.json() == {"org_id": org, "hold_id": "h1", "cost": "17.000", "available": "2983.000", "status": "open",
                        "replayed": False, "concurrency_limit": 5, "concurrency_open": 1}
    again = await http.post(f"/v1/orgs/{org}/holds", json={"action": "credit_score", "ttl_seconds": 600},
                            headers={"Idempotency-Key": "h1"})
    assert again.status_code == 201 and again.json()["replayed"] is True and again.json()["concurrency_open"] == 1
    done = await http.post(f"/v1/orgs/{org}/holds/h1/commit")
    assert done.status_code == 200, done.text
    assert done.json() | {"available": None} == {"org_id": org, "hold_id": "h1", "cost": "17.000", "available": None,
                                                 "status": "committed", "replayed": False, "concurrency_limit": 5,
                                                 "concurrency_open": 0}
    assert (await http.post(f"/v1/orgs/{org}/holds/h1/commit")).json()["replayed"] is True
    body = problem(await http.post(f"/v1/orgs/{org}/holds/h1/release"), 409, "HoldNotOpen")
    assert body["hold_status"] == "committed"
    problem(await http.post(f"/v1/orgs/{org}/holds/never-made/commit"), 409, "HoldNotOpen")

    r = await http.post(f"/v1/orgs/{org}/holds", json={"action": "ai_chat", "tier": "smart"},
                        headers={"Idempotency-Key": "h2"})
    assert r.status_code == 201, r.text
    released = await http.post(f"/v1/orgs/{org}/holds/h2/release")
    assert released.status_code == 200 and released.json()["status"] == "released"
    assert (await kit.billing.balance(org)).available == Decimal(2983)
    problem(await http.post(f"/v1/orgs/{org}/holds", json={**AI, "ttl_seconds": 0},
                            headers={"Idempotency-Key": "h3"}), 422, "InvalidRequest")


async def test_holds_past_the_plans_concurrency_are_refused(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)  # free: one open hold
    http = await client("platform")
    assert (await http.post(f"/v1/orgs/{org}/holds", json=AI,
                            headers={"Idempotency-Key": "h1"})).status_code == 201
    r = await http.post(f"/v1/orgs/{org}/holds", json=AI, headers={"Idempotency-Key": "h2"})
    body = problem(r, 429, "ConcurrencyLimitExceeded")
    assert body["limit"] == 1 and r.headers["retry-after"] == "1"
    assert (await http.get(f"/v1/orgs/{org}/balance")).json()["concurrency_open"] == 1


async def test_a_member_settles_only_its_own_holds(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    u1 = await client("member", org_id=org, user_id="u1")
    u2 = await client("member", org_id=org, user_id="u2")
    admin = await client("admin", org_id=org)
    assert (await u1.post(f"/v1/orgs/{org}/holds", json=AI,
                          headers={"Idempotency-Key": "u1-hold"})).status_code == 201
    assert (await admin.post(f"/v1/orgs/{org}/holds", json=AI,
                             headers={"Idempotency-Key": "org-hold"})).status_code == 201
    problem(await u2.post(f"/v1/orgs/{org}/holds/u1-hold/commit"), 403, "Forbidden")
    problem(await u1.post(f"/v1/orgs/{org}/holds/org-hold/release"), 403, "Forbidden")
    assert (await u1.post(f"/v1/orgs/{org}/holds/u1-hold/commit")).json()["status"] == "committed"
    assert (await admin.post(f"/v1/orgs/{org}/holds/org-hold/release")).json()["status"] == "released"


async def test_a_hold_that_crosses_the_threshold_starts_the_auto_recharge(kit: TestKit, org: str,
                                                                          client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await kit.billing.set_auto_recharge(org, threshold=Decimal(2990), pack="500")
    http = await client("admin", org_id=org)
    r = await http.post(f"/v1/orgs/{org}/holds", json={**AI, "quantity": 20},
                        headers={"Idempotency-Key": "big"})
    assert r.status_code == 201 and r.json()["available"] == "2980.000", r.text
    await kit.settle()
    assert [(c.purpose, c.amount_cents, c.status) for c in kit.charges(org)][-1] == ("auto_recharge", 2500, "succeeded")
    assert (await kit.billing.balance(org)).available == Decimal(3480)


async def test_tags_travel_with_a_debit_and_a_hold(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    spring = {"campaign": "spring", "result": "found"}
    r = await http.post(f"/v1/orgs/{org}/debits", json={**AI, "tags": spring}, headers={"Idempotency-Key": "t1"})
    assert r.status_code == 201 and r.json()["cost"] == "1.000", r.text
    again = await http.post(f"/v1/orgs/{org}/debits", json={**AI, "tags": {"result": "found", "campaign": "spring"}},
                            headers={"Idempotency-Key": "t1"})
    assert again.status_code == 201 and again.json()["replayed"] is True  # the same tags, in another order
    problem(await http.post(f"/v1/orgs/{org}/debits", json={**AI, "tags": {"campaign": "autumn"}},
                            headers={"Idempotency-Key": "t1"}), 409, "IdempotencyConflict")
    problem(await http.post(f"/v1/orgs/{org}/debits", json=AI, headers={"Idempotency-Key": "t1"}),
            409, "IdempotencyConflict")  # no tags is other content too
    assert (await http.post(f"/v1/orgs/{org}/holds", json={**AI, "tags": {"campaign": "spring"}},
                            headers={"Idempotency-Key": "h1"})).status_code == 201
    assert (await http.post(f"/v1/orgs/{org}/holds/h1/commit")).status_code == 200
    assert (await http.post(f"/v1/orgs/{org}/debits", json={**AI, "tags": {}},
                            headers={"Idempotency-Key": "t2"})).status_code == 201  # {} is no tags
    events = (await http.get(f"/v1/orgs/{org}/usage/events")).json()["events"]
    assert [(e["idempotency_key"], e["tags"]) for e in events] == [
        ("t2", {}), ("hold:h1", {"campaign": "spring"}), ("t1", spring)]

    # Bad tags: 422 before anything is written (nothing charged, nothing held).
    before = await kit.billing.transactions(org)
    bad: list[object] = [{"Campaign": "x"}, {"campaign": ""}, {"campaign": "x" * 101}, {"campaign": 3},
                         {"campaign": None}, {"campaign": "a\nb"}, {f"t{i}": "x" for i in range(11)}, ["campaign"],
                         "campaign:spring", {"a" * 33: "x"}, {"1st": "x"}]
    for i, tags in enumerate(bad):
        problem(await http.post(f"/v1/orgs/{org}/debits", json={**AI, "tags": tags},
                                headers={"Idempotency-Key": f"bad-{i}"}), 422, "InvalidRequest")
        problem(await http.post(f"/v1/orgs/{org}/holds", json={**AI, "tags": tags},
                                headers={"Idempotency-Key": f"bad-hold-{i}"}), 422, "InvalidRequest")
    assert await kit.billing.transactions(org) == before
    assert (await kit.billing.balance(org)).available == Decimal(47)  # t1, h1, t2: 1 each
