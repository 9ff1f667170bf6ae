"""Credit purchases over real HTTP: a pack bought once under its Idempotency-Key (the engine's purchase key), another
pack under it 409, a declined card 402 with nothing granted, a free organization paying with its contact and card."""

from __future__ import annotations

from decimal import Decimal

from stack.stripe_server import CARD_OK
from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"


async def test_a_pack_is_bought_once_under_its_key(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/credit-purchases"
    r = await http.post(url, json={"pack": "1000"}, headers={"Idempotency-Key": "order-1"})
    assert r.status_code == 201, r.text
    bought = r.json()
    assert (bought["pack"], bought["credits"], bought["amount_cents"], bought["currency"], bought["available"]) == \
        ("1000", "1000", 4500, "EUR", "11000.000")
    assert bought["invoice_number"].startswith("INV-")
    again = await http.post(url, json={"pack": "1000"}, headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 201 and again.json() == bought
    problem(await http.post(url, json={"pack": "500"}, headers={"Idempotency-Key": "order-1"}),
            409, "IdempotencyConflict")
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "pack"]
    assert (await kit.billing.balance(org)).topup == Decimal(1000)
    problem(await http.post(url, json={"pack": "750"}, headers={"Idempotency-Key": "order-2"}), 422, "InvalidRequest")


async def test_a_declined_pack_is_402_and_grants_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    await kit.use_card(org, "declined")
    http = await client("platform")
    body = problem(await http.post(f"/v1/orgs/{org}/credit-purchases", json={"pack": "500"},
                                   headers={"Idempotency-Key": "p1"}), 402, "PaymentDeclined")
    assert "decline_code" in body
    assert (await kit.billing.balance(org)).topup == Decimal(0)


async def test_a_free_organization_pays_with_its_contact_and_card(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/credit-purchases"
    problem(await http.post(url, json={"pack": "500"}), 422, "InvalidRequest")  # no billing contact yet
    card = await kit.payments.create_card(CARD_OK)
    r = await http.post(url, json={"pack": "500", "email": EMAIL, "payment_method": card})
    assert (r.status_code, r.json()["available"]) == (201, "550.000"), r.text


async def test_members_and_other_organizations_buy_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    member = await client("member", org_id=org, user_id="u1")
    problem(await member.post(f"/v1/orgs/{org}/credit-purchases", json={"pack": "500"}), 403, "Forbidden")
    stranger = await client("admin", org_id=org + "-elsewhere")
    problem(await stranger.post(f"/v1/orgs/{org}/credit-purchases", json={"pack": "500"}), 404,
            "UnknownOrganization")
    platform = await client("platform")
    problem(await platform.post("/v1/orgs/nobody-at-all/credit-purchases", json={"pack": "500"}), 404,
            "UnknownOrganization")
    assert [c.purpose for c in kit.charges(org)] == ["subscription"]
