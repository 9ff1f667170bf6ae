"""Contracts and catalog migrations over real HTTP (api/routes/contracts.py): set, read, end; the figures in
force at once (balance); refusals typed; who may do it (platform and admin set contracts, a member is refused,
another organization is 404; only a platform key migrates)."""

from __future__ import annotations

from datetime import timedelta

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "finance@cloro.test"


def seed_001(kit: TestKit) -> dict[str, object]:
    now = kit.now()
    return {"term_start": now.isoformat(), "term_end": (now + timedelta(days=365)).isoformat(),
            "allowance_multiplier": "1.2", "concurrency_multiplier": "1.3", "overage_allowed": True,
            "overage_cap": "20000", "overage_rate_cents": "0.4"}


async def test_set_read_and_end_a_contract(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="enterprise", email=EMAIL)
    http = await client("admin", org_id=org)
    assert (await http.get(f"/v1/orgs/{org}/contract")).json() == {"org_id": org, "contract": None}
    r = await http.put(f"/v1/orgs/{org}/contract", json=seed_001(kit))
    assert r.status_code == 200, r.text
    contract = r.json()["contract"]
    assert (contract["allowance_multiplier"], contract["concurrency_multiplier"], contract["overage_rate_cents"],
            contract["overage_cap"], contract["payment_terms"]) == ("1.2", "1.3", "0.4", "20000", "card")
    assert r.json()["catalog_version"] == 1
    assert (await http.get(f"/v1/orgs/{org}/contract")).json()["contract"] == contract
    balance = (await http.get(f"/v1/orgs/{org}/balance")).json()
    assert (balance["allocation"], balance["concurrency_limit"], balance["overage_allowed"], balance["overage_cap"]) \
        == ("48000.000", 130, True, "20000.000")
    # The same terms again: the same answer, nothing changed.
    assert (await http.put(f"/v1/orgs/{org}/contract", json=seed_001(kit) | {"term_start": contract["term_start"],
            "term_end": contract["term_end"]})).json()["contract"] == contract
    ended = await http.delete(f"/v1/orgs/{org}/contract")
    assert ended.status_code == 200 and ended.json()["contract"] is None
    balance = (await http.get(f"/v1/orgs/{org}/balance")).json()
    assert (balance["allocation"], balance["concurrency_limit"], balance["overage_allowed"]) == \
        ("40000.000", 100, False)


async def test_bad_terms_are_422_and_change_nothing(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    http = await client("platform")
    url = f"/v1/orgs/{org}/contract"
    for bad in ({"allowance_credits": "100"}, {"concurrency_multiplier": "0"}, {"overage_rate_cents": "-1"},
                {"overage_allowed": False}, {"net_days": 7}, {"term_end": kit.now().isoformat()},
                {"payment_terms": "invoice", "net_days": 23}):
        problem(await http.put(url, json=seed_001(kit) | bad), 422, "InvalidRequest")
    assert (await http.put(url, json=seed_001(kit) | {"colour": "red"})).status_code == 422  # unknown member
    assert (await http.get(url)).json()["contract"] is None
    assert (await http.get(f"/v1/orgs/{org}/balance")).json()["allocation"] == "10000.000"


async def test_who_may_set_a_contract_or_migrate(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    member = await client("member", org_id=org, user_id="ada")
    problem(await member.put(f"/v1/orgs/{org}/contract", json=seed_001(kit)), 403, "Forbidden")
    problem(await member.get(f"/v1/orgs/{org}/contract"), 403, "Forbidden")
    other = await client("admin", org_id=f"{org}-other")
    problem(await other.put(f"/v1/orgs/{org}/contract", json=seed_001(kit)), 404, "UnknownOrganization")
    admin = await client("admin", org_id=org)
    problem(await admin.post(f"/v1/orgs/{org}/subscription/migrate", json={}), 403, "Forbidden")
    platform = await client("platform")
    r = await platform.post(f"/v1/orgs/{org}/subscription/migrate", json={"version": 1})
    assert r.status_code == 200 and r.json()["catalog_version"] == 1
    problem(await platform.post(f"/v1/orgs/{org}/subscription/migrate", json={"version": 9}), 422, "InvalidRequest")


async def test_invoice_terms_over_http(kit: TestKit, org: str, client: Client) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    admin = await client("admin", org_id=org)
    terms = seed_001(kit) | {"payment_terms": "invoice", "net_days": 7}
    r = await admin.put(f"/v1/orgs/{org}/contract", json=terms)
    assert r.status_code == 200 and r.json()["contract"]["net_days"] == 7, r.text
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    invoices = (await admin.get(f"/v1/orgs/{org}/invoices")).json()["invoices"]
    [open_] = [i for i in invoices if i["status"] == "open"]
    assert (open_["purpose"], open_["total_cents"], open_["stripe_payment_id"], open_["paid_at"]) == \
        ("renewal", 9000, "", None)
    assert open_["due_at"].endswith("Z")
    paid_url = f"/v1/orgs/{org}/invoices/{open_['number']}/paid"
    problem(await admin.post(paid_url, json={}), 403, "Forbidden")  # an operator's act, not the organization's
    platform = await client("platform")
    r = await platform.post(paid_url, json={"reference": "transfer ref 4411"})
    assert r.status_code == 200 and r.json()["status"] == "paid" and r.json()["paid_at"], r.text
    problem(await platform.post(f"/v1/orgs/{org}/invoices/INV-2099-000001/paid", json={}), 404, "UnknownInvoice")


async def test_an_open_invoice_paid_by_card_over_http(kit: TestKit, org: str, client: Client) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    admin = await client("admin", org_id=org)
    terms = seed_001(kit) | {"payment_terms": "invoice", "net_days": 7}
    assert (await admin.put(f"/v1/orgs/{org}/contract", json=terms)).status_code == 200
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    [number] = [i.number for i in await kit.billing.invoices(org) if i.status == "open"]
    await kit.use_card(org, "declined")
    declined = await admin.post(f"/v1/orgs/{org}/invoices/{number}/pay", headers={"Idempotency-Key": "try-1"})
    problem(declined, 402, "PaymentDeclined")
    await kit.use_card(org, "ok")
    r = await admin.post(f"/v1/orgs/{org}/invoices/{number}/pay", headers={"Idempotency-Key": "try-2"})
    assert r.status_code == 200 and r.json()["status"] == "paid" and r.json()["stripe_payment_id"], r.text
    again = await admin.post(f"/v1/orgs/{org}/invoices/{number}/pay", headers={"Idempotency-Key": "try-2"})
    assert again.json() == r.json()
    [renewal] = [c for c in kit.charges(org) if c.purpose == "renewal"]
    assert (renewal.status, renewal.payment_intent) == ("succeeded", r.json()["stripe_payment_id"])
    await kit.settle()
    assert [m.template for m in kit.emails(org)].count("receipt") == 2  # the first period's, and this one's
    await kit.advance(timedelta(days=10))  # past the due date: no reminder, it is paid
    assert "invoice_due" not in [m.template for m in kit.emails(org)]
