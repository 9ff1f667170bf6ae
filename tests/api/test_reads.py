"""Reads over real HTTP: balance, usage (a member's own only), transactions, invoices (their document apart)."""

from __future__ import annotations

from datetime import timedelta

from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"


async def _meter(kit: TestKit, org: str) -> None:
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=2, user_id="u1", idempotency_key="a")
    await kit.billing.debit(org, action="ai_chat", tier="smart", user_id="u2", idempotency_key="b")
    await kit.billing.debit(org, action="email_validation", quantity=3, idempotency_key="c")


async def test_balance_and_usage_as_the_sdk_reads_them(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await _meter(kit, org)
    http = await client("admin", org_id=org)
    balance = (await http.get(f"/v1/orgs/{org}/balance")).json()
    assert {k: balance[k] for k in ("plan_name", "available", "plan", "topup", "held", "allocation",
                                    "consumed_this_period", "concurrency_limit", "concurrency_open")} == {
        "plan_name": "starter", "available": "2991.500", "plan": "2991.500", "topup": "0.000", "held": "0.000",
        "allocation": "3000.000", "consumed_this_period": "8.500", "concurrency_limit": 5, "concurrency_open": 0}
    by_action = (await http.get(f"/v1/orgs/{org}/usage")).json()
    assert by_action["by"] == "action"
    assert [(r["key"], r["uses"], r["quantity"], r["credits"]) for r in by_action["rows"]] == [
        ("ai_chat", 2, "3", "7.000"), ("email_validation", 1, "3", "1.500")]
    by_tier = (await http.get(f"/v1/orgs/{org}/usage", params={"by": "tier"})).json()["rows"]
    assert [(r["key"], r["credits"]) for r in by_tier] == [("smart", "5.000"), ("fast", "2.000"), (None, "1.500")]
    later = (kit.now() + timedelta(hours=1)).isoformat()
    assert (await http.get(f"/v1/orgs/{org}/usage", params={"since": later})).json()["rows"] == []
    earlier = (kit.now() - timedelta(hours=1)).isoformat()
    assert len((await http.get(f"/v1/orgs/{org}/usage", params={"until": later, "since": earlier})).json()["rows"]) == 2
    problem(await http.get(f"/v1/orgs/{org}/usage", params={"since": "2026-01-01T00:00:00"}), 422, "InvalidRequest")
    problem(await http.get(f"/v1/orgs/{org}/usage", params={"by": "country"}), 422, "InvalidRequest")
    problem(await http.get(f"/v1/orgs/{org}/usage", params={"since": later, "until": earlier}), 422, "InvalidRequest")


async def test_a_member_reads_its_balance_and_its_own_usage_only(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await _meter(kit, org)
    member = await client("member", org_id=org, user_id="u1")
    assert (await member.get(f"/v1/orgs/{org}/balance")).status_code == 200
    mine = (await member.get(f"/v1/orgs/{org}/usage", params={"by": "user"})).json()["rows"]
    assert [(r["key"], r["credits"]) for r in mine] == [("u1", "2.000")]
    problem(await member.get(f"/v1/orgs/{org}/usage"), 403, "Forbidden")
    problem(await member.get(f"/v1/orgs/{org}/usage", params={"by": "tier"}), 403, "Forbidden")
    problem(await member.get(f"/v1/orgs/{org}/transactions"), 403, "Forbidden")
    problem(await member.get(f"/v1/orgs/{org}/invoices"), 403, "Forbidden")


async def test_transactions_and_invoices(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await kit.billing.debit(org, action="ai_chat", tier="fast", idempotency_key="a")
    http = await client("platform")
    txs = (await http.get(f"/v1/orgs/{org}/transactions")).json()["transactions"]
    assert [(t["kind"], t["credits"], t["ref"]) for t in txs][-1] == ("debit", "-1.000", "a")
    assert txs[0]["kind"] == "grant" and txs[0]["at"].endswith("Z")
    later = (kit.now() + timedelta(hours=1)).isoformat()
    assert (await http.get(f"/v1/orgs/{org}/transactions", params={"since": later})).json()["transactions"] == []

    [invoice] = (await http.get(f"/v1/orgs/{org}/invoices")).json()["invoices"]
    assert (invoice["purpose"], invoice["total_cents"], invoice["currency"], invoice["tax_rate"]) == \
        ("subscription", 4900, "EUR", "0")
    assert "html" not in invoice and invoice["lines"][0]["amount_cents"] == 4900
    document = (await http.get(f"/v1/orgs/{org}/invoices/{invoice['number']}")).json()
    assert document | {"html": None} == invoice | {"html": None} and invoice["number"] in document["html"]
    problem(await http.get(f"/v1/orgs/{org}/invoices/INV-1999-000001"), 404, "NotFound")
    problem(await http.get("/v1/orgs/nobody-at-all/invoices"), 404, "UnknownOrganization")
    problem(await http.get("/v1/orgs/nobody-at-all/transactions"), 404, "UnknownOrganization")
    problem(await http.get("/v1/orgs/nobody-at-all/usage"), 404, "UnknownOrganization")
