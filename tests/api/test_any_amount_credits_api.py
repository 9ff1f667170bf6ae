"""Any amount of credits over real HTTP: `credits` on the purchase and auto-recharge endpoints, bought once under
the Idempotency-Key, refused typed (422) when the amount is wrong or both/neither of pack and credits are sent."""

from __future__ import annotations

from decimal import Decimal

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"


async def test_100_credits_are_bought_for_20_eur_once(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/credit-purchases"
    r = await http.post(url, json={"credits": "100"}, headers={"Idempotency-Key": "order-1"})
    assert r.status_code == 201, r.text
    bought = r.json()
    assert (bought["pack"], bought["credits"], bought["amount_cents"], bought["currency"], bought["available"]) == \
        (None, "100", 2000, "EUR", "10100.000")
    again = await http.post(url, json={"credits": "100.000"}, headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 201 and again.json() == bought
    problem(await http.post(url, json={"credits": "150"}, headers={"Idempotency-Key": "order-1"}),
            409, "IdempotencyConflict")
    problem(await http.post(url, json={"pack": "500"}, headers={"Idempotency-Key": "order-1"}),
            409, "IdempotencyConflict")
    assert [(c.purpose, c.amount_cents) for c in kit.charges(org)] == [("subscription", 9000), ("pack", 2000)]
    assert (await kit.billing.balance(org)).topup == Decimal(100)


async def test_bad_amounts_are_422_and_charge_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    http = await client("platform")
    url = f"/v1/orgs/{org}/credit-purchases"
    body = problem(await http.post(url, json={"credits": "99"}), 422, "InvalidRequest")
    assert "at least 100 credits" in body["detail"]
    for bad in ({"credits": "-100"}, {"credits": "100.0001"}, {"credits": "abc"}, {"credits": "NaN"},
                {"credits": "100", "pack": "500"}, {}, {"credits": None}):
        problem(await http.post(url, json=bad), 422, "InvalidRequest")
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]
    assert (await kit.billing.balance(org)).topup == Decimal(0)


async def test_auto_recharge_by_an_amount(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/auto-recharge"
    r = await http.put(url, json={"threshold": "100", "credits": "250", "spending_limit_cents": 10000})
    assert r.status_code == 200, r.text
    expected = {"org_id": org, "configured": True, "enabled": True, "threshold": "100.000", "pack": None,
                "credits": "250", "spending_limit_cents": 10000, "currency": "EUR", "disabled_reason": None}
    assert r.json() == expected and (await http.get(url)).json() == expected
    problem(await http.put(url, json={"threshold": "100", "credits": "99"}), 422, "InvalidRequest")
    problem(await http.put(url, json={"threshold": "100", "credits": "250", "pack": "500"}), 422, "InvalidRequest")
    problem(await http.put(url, json={"threshold": "100"}), 422, "InvalidRequest")
    problem(await http.put(url, json={"threshold": "100", "credits": "250", "spending_limit_cents": 4999}), 422,
            "InvalidRequest")
    assert (await http.get(url)).json() == expected  # refusals changed nothing
