"""The subscription over real HTTP: start, read and every change; a declined charge (402) and its stored answer;
the Idempotency-Key of a subscription POST (replay, conflict); who may do it."""

from __future__ import annotations

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"
START = {"plan": "starter", "seats": 2, "interval": "month", "trial_days": 0, "email": EMAIL}


async def test_subscribe_read_and_change_the_subscription(kit: TestKit, org: str, client: Client) -> None:
    http = await client("admin", org_id=org)
    problem(await http.get(f"/v1/orgs/{org}/subscription"), 404, "UnknownOrganization")  # nothing yet
    r = await http.post(f"/v1/orgs/{org}/subscription", json=START | {"vat_rate": "0.20"})
    assert r.status_code == 201, r.text
    sub = r.json()
    assert (sub["org_id"], sub["plan"], sub["seats"], sub["status"], sub["interval"]) == \
        (org, "starter", 2, "active", "month")
    assert sub["period_start"].endswith("Z") and sub["incident"] is None
    assert [(c.amount_cents, c.purpose) for c in kit.charges(org)] == [(11760, "subscription")]  # 2 x 49.00 + 20%
    assert (await http.get(f"/v1/orgs/{org}/subscription")).json() == sub

    async def change(path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        answer = await http.post(f"/v1/orgs/{org}/subscription/{path}", json=body)
        assert answer.status_code == 200, answer.text
        result: dict[str, object] = answer.json()
        return result

    assert (await change("upgrade", {"plan": "pro"}))["plan"] == "pro"
    assert (await change("seats", {"seats": 3}))["seats"] == 3
    assert (await change("downgrade", {"plan": "starter"}))["pending_plan"] == "starter"
    assert (await change("cancel"))["cancel_at_period_end"] is True
    assert (await change("resume"))["cancel_at_period_end"] is False
    assert (await change("retry"))["incident"] is None  # nothing had failed: answered at once
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "upgrade", "seats"]
    problem(await http.post(f"/v1/orgs/{org}/subscription", json=START), 422, "InvalidRequest")  # one per org


async def test_bad_subscription_requests_are_refused_and_start_nothing(kit: TestKit, org: str, client: Client) -> None:
    http = await client("platform")
    url = f"/v1/orgs/{org}/subscription"
    for bad in ({"plan": "gold"}, {"seats": 0}, {"seats": 6}, {"interval": "week"}, {"email": "nobody"},
                {"vat_rate": "1.5"}, {"trial_days": -1}, {"payment_method": ""}):
        problem(await http.post(url, json=START | bad), 422, "InvalidRequest")
    problem(await http.post(url, json={k: v for k, v in START.items() if k != "email"}), 422, "InvalidRequest")
    problem(await http.post(f"{url}/upgrade", json={"plan": "pro"}), 422, "InvalidRequest")  # no subscription
    assert kit.charges(org) == []
    await kit.billing.open_wallet(org)
    problem(await http.get(url), 422, "InvalidRequest")  # a wallet, never subscribed


async def test_a_declined_upgrade_is_402_and_its_answer_is_kept_under_its_key(kit: TestKit, org: str,
                                                                              client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await kit.use_card(org, "declined")
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/subscription/upgrade"
    first = await http.post(url, json={"plan": "pro"}, headers={"Idempotency-Key": "up-1"})
    problem(first, 402, "PaymentDeclined")
    assert (await kit.billing.subscription(org)).plan == "starter"
    await kit.use_card(org, "ok")
    again = await http.post(url, json={"plan": "pro"}, headers={"Idempotency-Key": "up-1"})
    assert (again.status_code, again.json(), again.headers["idempotent-replayed"]) == (402, first.json(), "true")
    assert [c.status for c in kit.charges(org)] == ["succeeded", "declined"]  # the repeat charged nothing
    fresh = await http.post(url, json={"plan": "pro"}, headers={"Idempotency-Key": "up-2"})
    assert fresh.status_code == 200 and fresh.json()["plan"] == "pro"


async def test_a_subscription_post_under_an_idempotency_key_runs_once(kit: TestKit, org: str, client: Client) -> None:
    http = await client("platform")
    url = f"/v1/orgs/{org}/subscription"
    first = await http.post(url, json=START, headers={"Idempotency-Key": "sub-1"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers, first.text
    # The same request, its JSON spaced and ordered differently: the first answer, nothing run again.
    same = await http.post(url, content=b'{"email": "billing@acme.test", "trial_days": 0, "plan": "starter", '
                                        b'"interval": "month", "seats": 2}',
                           headers={"Idempotency-Key": "sub-1", "content-type": "application/json"})
    assert (same.status_code, same.json(), same.headers["idempotent-replayed"]) == (201, first.json(), "true")
    body = problem(await http.post(url, json=START | {"seats": 3}, headers={"Idempotency-Key": "sub-1"}),
                   409, "IdempotencyConflict")
    assert (body["key"], body["org_id"]) == ("sub-1", org)
    problem(await http.post(f"{url}/cancel", headers={"Idempotency-Key": "sub-1"}), 409, "IdempotencyConflict")
    # Keys are per organization: another one's "sub-1" is its own.
    other = org + "-b"
    assert (await http.post(f"/v1/orgs/{other}/subscription", json=START,
                            headers={"Idempotency-Key": "sub-1"})).status_code == 201
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]
    problem(await http.post(f"{url}/cancel", headers={"Idempotency-Key": ""}), 422, "InvalidRequest")


async def test_only_platform_and_admin_keys_run_the_subscription(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    member = await client("member", org_id=org, user_id="u1")
    url = f"/v1/orgs/{org}/subscription"
    problem(await member.post(url, json=START), 403, "Forbidden")
    problem(await member.get(url), 403, "Forbidden")
    for path, body in (("upgrade", {"plan": "pro"}), ("downgrade", {"plan": "free"}), ("seats", {"seats": 2}),
                       ("cancel", None), ("resume", None), ("retry", None)):
        problem(await member.post(f"{url}/{path}", json=body), 403, "Forbidden")
    stranger = await client("admin", org_id=org + "-elsewhere")
    problem(await stranger.post(f"{url}/cancel"), 404, "UnknownOrganization")
    problem(await stranger.get(url), 404, "UnknownOrganization")
    assert not (await kit.billing.subscription(org)).cancel_at_period_end
