"""Usage insight over real HTTP (api/routes/insight.py): exact figures for each route over a seeded history, the
log's pages followed by next_cursor until null (no gap, no repeat), a member narrowed to its own usage (another
member's is 403, another organization 404), streamed exports parsed back, the projection and the runway alert,
and bad query parameters refused (422) with nothing changed."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from ledger import Ledger
from models.credits import to_milli
from models.ledger_types import StartPeriod
from models.projection import project
from testkit import TestKit
from tests.api.conftest import Client, problem

EMAIL = "billing@acme.test"
T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # the seeded history's wallet opens here (a 31-day period)
H = timedelta(hours=1)
DAY = timedelta(days=1)
NEWEST_FIRST = ["e6", "hold:h1", "e5", "e4", "e3", "e2", "e1"]


def _z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def _seed(ledger: Ledger, org: str) -> None:
    """Seven uses over three UTC days (credits: ai_chat fast 1, smart 5; lead_enrichment 5; sms 0.45; insight
    smart 50); two at the same instant (T0+15h), one at a day's first microsecond (Jan 17 00:00)."""
    await ledger.start_period(StartPeriod(org, f"{org}:start", "pro", T0, T0 + 31 * DAY, T0))
    spring = {"campaign": "spring"}
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="e1",
                       tags=spring | {"country": "fr"}, now=T0 + H)
    await ledger.debit(org, "ai_chat", tier="smart", user_id="u2", idempotency_key="e2", tags=spring, now=T0 + 2 * H)
    await ledger.debit(org, "lead_enrichment", quantity=2, user_id="u1", idempotency_key="e3",
                       tags={"campaign": "autumn", "result": "found"}, now=T0 + 11 * H)  # Jan 15 23:00
    await ledger.debit(org, "sms", quantity=3, country="fr", idempotency_key="e4", now=T0 + 13 * H)  # Jan 16 01:00
    await ledger.hold(org, "insight", tier="smart", user_id="u2", idempotency_key="h1",
                      tags=spring | {"result": "found"}, ttl=DAY, now=T0 + 14 * H)
    await ledger.commit(org, "h1", now=T0 + 15 * H)
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="e5",
                       tags=spring | {"result": "found"}, now=T0 + 15 * H)
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="e6", now=T0 + 36 * H)


async def _keys(http: httpx.AsyncClient, org: str, **params: Any) -> list[str]:
    r = await http.get(f"/v1/orgs/{org}/usage/events", params=params)
    assert r.status_code == 200, r.text
    assert r.json()["next_cursor"] is None
    return [e["idempotency_key"] for e in r.json()["events"]]


async def _all_pages(http: httpx.AsyncClient, org: str, **params: Any) -> tuple[list[str], int]:
    """Every event by following next_cursor until null: the keys in order, and the number of pages."""
    keys: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        r = await http.get(f"/v1/orgs/{org}/usage/events", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        pages += 1
        keys += [e["idempotency_key"] for e in r.json()["events"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return keys, pages


async def test_the_log_with_each_filter_and_its_pages(kit: TestKit, org: str, client: Client) -> None:
    await _seed(kit.billing.ledger, org)
    http = await client("admin", org_id=org)
    r = await http.get(f"/v1/orgs/{org}/usage/events")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["org_id"] == org and body["next_cursor"] is None
    assert [e["idempotency_key"] for e in body["events"]] == NEWEST_FIRST
    by_key = {e["idempotency_key"]: e for e in body["events"]}
    assert by_key["hold:h1"] == {
        "at": _z(T0 + 15 * H), "idempotency_key": "hold:h1", "source": "hold", "action": "insight", "tier": "smart",
        "quantity": "1", "country": None, "user_id": "u2", "credits": "50.000",
        "tags": {"campaign": "spring", "result": "found"}}
    assert by_key["e4"] | {"quantity": None} == {
        "at": _z(T0 + 13 * H), "idempotency_key": "e4", "source": "debit", "action": "sms", "tier": None,
        "quantity": None, "country": "FR", "user_id": None, "credits": "1.350", "tags": {}}
    assert Decimal(by_key["e4"]["quantity"]) == 3
    assert by_key["e1"]["tags"] == {"campaign": "spring", "country": "fr"}

    assert await _keys(http, org, action="ai_chat") == ["e6", "e5", "e2", "e1"]
    assert await _keys(http, org, tier="smart") == ["hold:h1", "e2"]
    assert await _keys(http, org, user_id="u1") == ["e6", "e5", "e3", "e1"]
    assert await _keys(http, org, tag="campaign:spring") == ["hold:h1", "e5", "e2", "e1"]
    assert await _keys(http, org, tag=["campaign:spring", "result:found"]) == ["hold:h1", "e5"]
    assert await _keys(http, org, tag="campaign:winter") == []
    assert await _keys(http, org, since=_z(T0 + 11 * H), until=_z(T0 + 15 * H)) == ["e4", "e3"]  # until excluded
    assert await _keys(http, org, since=(T0 + 11 * H).astimezone(timezone(2 * H)).isoformat()) == NEWEST_FIRST[:5]
    assert await _keys(http, org, action="ai_chat", user_id="u1", tag="campaign:spring") == ["e5", "e1"]

    # Pages: followed until next_cursor is null, every event once, in order, across the tie at T0+15h.
    for limit, pages in ((1, 7), (2, 4), (3, 3), (7, 1), (1000, 1)):
        assert await _all_pages(http, org, limit=limit) == (NEWEST_FIRST, pages)
    assert await _all_pages(http, org, limit=1, tag="campaign:spring") == (["hold:h1", "e5", "e2", "e1"], 4)
    first = (await http.get(f"/v1/orgs/{org}/usage/events", params={"limit": 2})).json()
    assert [e["idempotency_key"] for e in first["events"]] == ["e6", "hold:h1"] and first["next_cursor"]
    # A use metered after the first page does not shift the next one (a position, not an offset).
    await kit.billing.ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="e7", now=T0 + 40 * H)
    second = (await http.get(f"/v1/orgs/{org}/usage/events", params={"limit": 2,
                                                                     "cursor": first["next_cursor"]})).json()
    assert [e["idempotency_key"] for e in second["events"]] == ["e5", "e4"]


async def test_a_member_reads_its_own_usage_only(kit: TestKit, org: str, client: Client) -> None:
    await _seed(kit.billing.ledger, org)
    u1 = await client("member", org_id=org, user_id="u1")
    assert await _keys(u1, org) == ["e6", "e5", "e3", "e1"]
    assert await _keys(u1, org, user_id="u1", tag="campaign:spring") == ["e5", "e1"]
    assert await _all_pages(u1, org, limit=1) == (["e6", "e5", "e3", "e1"], 4)
    problem(await u1.get(f"/v1/orgs/{org}/usage/events", params={"user_id": "u2"}), 403, "Forbidden")
    summary = (await u1.get(f"/v1/orgs/{org}/usage/summary")).json()
    assert summary["user_id"] == "u1"
    assert [(a["action"], a["uses"], a["credits"]) for a in summary["actions"]] == [
        ("lead_enrichment", 1, "10.000"), ("ai_chat", 3, "3.000")]
    problem(await u1.get(f"/v1/orgs/{org}/usage/summary", params={"user_id": "u2"}), 403, "Forbidden")
    series = (await u1.get(f"/v1/orgs/{org}/usage/series", params={
        "since": "2026-01-15T00:00:00Z", "until": "2026-01-18T00:00:00Z", "by": "action"})).json()
    assert series["user_id"] == "u1"
    assert [(p["start"][:10], p["key"], p["uses"], p["credits"]) for p in series["points"]] == [
        ("2026-01-15", "ai_chat", 1, "1.000"), ("2026-01-15", "lead_enrichment", 1, "10.000"),
        ("2026-01-16", "ai_chat", 1, "1.000"), ("2026-01-16", "lead_enrichment", 0, "0.000"),
        ("2026-01-17", "ai_chat", 1, "1.000"), ("2026-01-17", "lead_enrichment", 0, "0.000")]
    window = {"since": "2026-01-15T00:00:00Z", "until": "2026-01-18T00:00:00Z"}
    problem(await u1.get(f"/v1/orgs/{org}/usage/series", params={**window, "by": "user"}), 403, "Forbidden")
    problem(await u1.get(f"/v1/orgs/{org}/usage/series", params={**window, "user_id": "u2"}), 403, "Forbidden")
    for path in ("/usage/lifetime", "/usage/export", "/usage/projection", "/settings/runway-alert"):
        problem(await u1.get(f"/v1/orgs/{org}{path}"), 403, "Forbidden")
    problem(await u1.put(f"/v1/orgs/{org}/settings/runway-alert", json={"enabled": True}), 403, "Forbidden")

    # Another organization, existing or not, answers 404 alike, before anything is looked at.
    other = org + "-other"
    await _seed(kit.billing.ledger, other)
    for path in ("/usage/events", "/usage/summary", "/usage/lifetime", "/usage/export", "/usage/projection",
                 "/users/u1/usage", "/settings/runway-alert", f"/usage/series?since={window['since']}"
                 f"&until={window['until']}"):
        there = await u1.get(f"/v1/orgs/{other}{path}")
        nowhere = await u1.get(f"/v1/orgs/{org}-missing{path}")
        problem(there, 404, "UnknownOrganization")
        assert there.json()["detail"].replace(other, "X") == nowhere.json()["detail"].replace(f"{org}-missing", "X")
    admin = await client("admin", org_id=org)
    problem(await admin.get(f"/v1/orgs/{other}/usage/events"), 404, "UnknownOrganization")
    platform = await client("platform")
    problem(await platform.get(f"/v1/orgs/{org}-missing/usage/events"), 404, "UnknownOrganization")
    problem(await platform.get(f"/v1/orgs/{org}-missing/usage/summary"), 404, "UnknownOrganization")
    problem(await platform.get(f"/v1/orgs/{org}-missing/usage/export"), 404, "UnknownOrganization")


async def test_summary_and_series_exact_at_utc_day_and_hour_boundaries(kit: TestKit, org: str,
                                                                        client: Client) -> None:
    await _seed(kit.billing.ledger, org)
    http = await client("platform")
    summary = (await http.get(f"/v1/orgs/{org}/usage/summary")).json()
    assert (summary["since"], summary["until"], summary["user_id"]) == (None, None, None)
    assert [(a["action"], a["uses"], Decimal(a["quantity"]), a["credits"], a["credits_per_use"])
            for a in summary["actions"]] == [
        ("insight", 1, Decimal(1), "50.000", "50.000"), ("lead_enrichment", 1, Decimal(2), "10.000", "10.000"),
        ("ai_chat", 4, Decimal(4), "8.000", "2.000"), ("sms", 1, Decimal(3), "1.350", "1.350")]
    later = (await http.get(f"/v1/orgs/{org}/usage/summary", params={"since": _z(T0 + 12 * H)})).json()
    assert [(a["action"], a["uses"], a["credits"], a["credits_per_use"]) for a in later["actions"]] == [
        ("insight", 1, "50.000", "50.000"), ("ai_chat", 2, "2.000", "1.000"), ("sms", 1, "1.350", "1.350")]
    assert later["since"] == _z(T0 + 12 * H)
    u2 = (await http.get(f"/v1/orgs/{org}/usage/summary", params={"user_id": "u2"})).json()
    assert [(a["action"], a["credits"]) for a in u2["actions"]] == [("insight", "50.000"), ("ai_chat", "5.000")]

    window = {"since": "2026-01-15T00:00:00Z", "until": "2026-01-18T00:00:00Z"}
    r = await http.get(f"/v1/orgs/{org}/usage/series", params={**window, "by": "action"})
    assert r.status_code == 200, r.text
    series = r.json()
    assert (series["bucket"], series["by"], series["since"], series["until"]) == (
        "day", "action", window["since"], window["until"])
    assert [(p["start"], p["key"], p["uses"], p["credits"]) for p in series["points"]] == [
        ("2026-01-15T00:00:00Z", "ai_chat", 2, "6.000"), ("2026-01-15T00:00:00Z", "insight", 0, "0.000"),
        ("2026-01-15T00:00:00Z", "lead_enrichment", 1, "10.000"), ("2026-01-15T00:00:00Z", "sms", 0, "0.000"),
        ("2026-01-16T00:00:00Z", "ai_chat", 1, "1.000"), ("2026-01-16T00:00:00Z", "insight", 1, "50.000"),
        ("2026-01-16T00:00:00Z", "lead_enrichment", 0, "0.000"), ("2026-01-16T00:00:00Z", "sms", 1, "1.350"),
        ("2026-01-17T00:00:00Z", "ai_chat", 1, "1.000"), ("2026-01-17T00:00:00Z", "insight", 0, "0.000"),
        ("2026-01-17T00:00:00Z", "lead_enrichment", 0, "0.000"), ("2026-01-17T00:00:00Z", "sms", 0, "0.000")]
    by_user = (await http.get(f"/v1/orgs/{org}/usage/series", params={**window, "by": "user"})).json()["points"]
    assert [(p["start"][:10], p["key"], p["uses"], p["credits"]) for p in by_user] == [
        ("2026-01-15", "u1", 2, "11.000"), ("2026-01-15", "u2", 1, "5.000"), ("2026-01-15", None, 0, "0.000"),
        ("2026-01-16", "u1", 1, "1.000"), ("2026-01-16", "u2", 1, "50.000"), ("2026-01-16", None, 1, "1.350"),
        ("2026-01-17", "u1", 1, "1.000"), ("2026-01-17", "u2", 0, "0.000"), ("2026-01-17", None, 0, "0.000")]
    hours = (await http.get(f"/v1/orgs/{org}/usage/series", params={
        "since": _z(T0 + 10 * H), "until": _z(T0 + 14 * H), "bucket": "hour"})).json()
    assert hours["by"] is None
    assert [(p["start"], p["key"], p["uses"], p["credits"]) for p in hours["points"]] == [
        ("2026-01-15T22:00:00Z", None, 0, "0.000"), ("2026-01-15T23:00:00Z", None, 1, "10.000"),
        ("2026-01-16T00:00:00Z", None, 0, "0.000"), ("2026-01-16T01:00:00Z", None, 1, "1.350")]

    # Bad parameters: 422, and nothing changed.
    before = await kit.billing.transactions(org)
    bad: list[tuple[str, dict[str, Any]]] = [
           ("/usage/series", {**window, "bucket": "week"}), ("/usage/series", {**window, "by": "tier"}),
           ("/usage/series", {"since": window["since"]}), ("/usage/series", {"until": window["until"]}),
           ("/usage/series", {"since": "2026-01-01T00:00:00Z", "until": "2026-03-01T00:00:00Z", "bucket": "hour"}),
           ("/usage/series", {"since": window["until"], "until": window["since"]}),
           ("/usage/series", {**window, "since": "2026-01-15T00:00:00"}),
           ("/usage/summary", {"since": "yesterday"}), ("/usage/summary", {"until": "2026-01-15T00:00:00"}),
           ("/usage/events", {"limit": 0}), ("/usage/events", {"limit": 1001}), ("/usage/events", {"limit": "ten"}),
           ("/usage/events", {"cursor": "not-a-cursor"}), ("/usage/events", {"tag": "campaign"}),
           ("/usage/events", {"tag": "Campaign:spring"}), ("/usage/events", {"tag": "campaign:"}),
           ("/usage/events", {"tag": ["campaign:spring", "campaign:autumn"]}),
           ("/usage/events", {"since": _z(T0 + 2 * H), "until": _z(T0 + H)}),
           ("/usage/events", {"user_id": " "})]
    for path, params in bad:
        problem(await http.get(f"/v1/orgs/{org}{path}", params=params), 422, "InvalidRequest")
    assert await kit.billing.transactions(org) == before


async def test_exports_stream_what_the_log_and_the_transactions_show(kit: TestKit, org: str,
                                                                    client: Client) -> None:
    await _seed(kit.billing.ledger, org)
    http = await client("admin", org_id=org)
    events = (await http.get(f"/v1/orgs/{org}/usage/events")).json()["events"][::-1]  # oldest first

    r = await http.get(f"/v1/orgs/{org}/usage/export")  # defaults: usage, CSV
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="{org}-usage.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["idempotency_key"] for row in rows] == ["e1", "e2", "e3", "e4", "e5", "hold:h1", "e6"]
    for row, event in zip(rows, events, strict=True):
        assert {k: v or None for k, v in row.items() if k not in ("tags", "quantity")} == {
            k: v for k, v in event.items() if k not in ("tags", "quantity")}
        assert json.loads(row["tags"]) == event["tags"] and Decimal(row["quantity"]) == Decimal(event["quantity"])

    r = await http.get(f"/v1/orgs/{org}/usage/export", params={"format": "jsonl", "since": _z(T0 + 11 * H),
                                                               "until": _z(T0 + 15 * H)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["content-disposition"] == f'attachment; filename="{org}-usage.jsonl"'
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["idempotency_key"] for line in lines] == ["e3", "e4"]
    assert lines[0]["tags"] == {"campaign": "autumn", "result": "found"} and lines[1]["tags"] == {}
    assert (lines[0]["credits"], lines[1]["country"], lines[1]["user_id"]) == ("10.000", "FR", None)

    txs = (await http.get(f"/v1/orgs/{org}/transactions")).json()["transactions"]
    r = await http.get(f"/v1/orgs/{org}/usage/export", params={"what": "transactions"})
    assert r.headers["content-disposition"] == f'attachment; filename="{org}-transactions.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [{k: v or None for k, v in row.items()} for row in rows] == [
        {k: None if v is None else str(v) for k, v in t.items()} for t in txs]
    r = await http.get(f"/v1/orgs/{org}/usage/export", params={"what": "transactions", "format": "jsonl"})
    assert [json.loads(line) for line in r.text.splitlines()] == txs

    # Past several chunks of rows (EXPORT_CHUNK_ROWS), streamed: every row once, in order.
    await _many(kit.billing.ledger, org, 2100)
    async with http.stream("GET", f"/v1/orgs/{org}/usage/export", params={"format": "jsonl",
                                                                          "since": _z(T0 + 48 * H)}) as s:
        assert s.status_code == 200
        buffer = b""
        async for chunk in s.aiter_bytes():
            buffer += chunk
        keys = [json.loads(line)["idempotency_key"] for line in buffer.decode().splitlines()]
    assert len(keys) == 2100 and keys == [f"bulk-{i:05d}" for i in range(2100)]

    # Refusals come before the first byte, as problems; nothing changes.
    before = await kit.billing.transactions(org)
    for params in ({"what": "invoices"}, {"format": "xml"}, {"since": "2026-01-15T00:00:00"},
                   {"since": _z(T0 + 2 * H), "until": _z(T0)}):
        problem(await http.get(f"/v1/orgs/{org}/usage/export", params=params), 422, "InvalidRequest")
    assert await kit.billing.transactions(org) == before


async def test_an_export_the_database_refuses_is_a_problem_before_any_byte(kit: TestKit, org: str,
                                                                          client: Client) -> None:
    """The export streams on a connection of its own, opened when the route reads its first chunk, before the
    answer starts: a database that refuses it gives a 503 problem, not a 200 cut short."""
    await _seed(kit.billing.ledger, org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/usage/export"
    assert (await http.get(url)).status_code == 200
    held: list[psycopg.AsyncConnection[Any]] = []
    try:
        while True:  # every connection the server allows taken (the pools keep theirs, opened at start)
            try:
                held.append(await psycopg.AsyncConnection.connect(kit.database_url, connect_timeout=10))
            except psycopg.OperationalError:
                break
            assert len(held) < 2000
        refused = await http.get(url, params={"format": "jsonl"})
    finally:
        for conn in held:
            await conn.close()
    body = problem(refused, 503, "ServiceUnavailable")
    assert "export could not reach the database" in body["detail"] and refused.headers["retry-after"] == "1"
    again = await http.get(url, params={"format": "jsonl"})
    assert again.status_code == 200 and len(again.text.splitlines()) == 7


async def _many(ledger: Ledger, org: str, n: int) -> None:
    for start in range(0, n, 100):
        await asyncio.gather(*(ledger.debit(org, "email_validation", idempotency_key=f"bulk-{i:05d}",
                                            now=T0 + 48 * H + i * timedelta(milliseconds=1))
                               for i in range(start, min(start + 100, n))))


async def test_lifetime_totals_across_a_renewal_and_a_pack(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)  # 3,000 credits a month
    await kit.billing.buy_credits(org, pack="500")
    await kit.billing.debit(org, action="insight", tier="smart", idempotency_key="i1")  # 50
    await kit.billing.debit(org, action="ai_chat", tier="fast", quantity=Decimal("2.5"), idempotency_key="a1")  # 2.5
    http = await client("admin", org_id=org)
    r = await http.get(f"/v1/orgs/{org}/usage/lifetime")
    assert r.status_code == 200, r.text
    first = r.json()
    assert {k: v for k, v in first.items() if k != "since"} == {
        "org_id": org, "added": "3500.000", "added_plan": "3000.000", "added_packs": "500.000", "used": "52.500",
        "expired": "0.000"}
    assert first["since"].endswith("Z")
    await kit.advance(timedelta(days=32))  # renewed: the first period's unused plan credits expire
    await kit.billing.debit(org, action="ai_chat", tier="fast", idempotency_key="a2")
    after = (await http.get(f"/v1/orgs/{org}/usage/lifetime")).json()
    assert {k: v for k, v in after.items() if k != "since"} == {
        "org_id": org, "added": "6500.000", "added_plan": "6000.000", "added_packs": "500.000", "used": "53.500",
        "expired": "2947.500"}
    assert after["since"] == first["since"]


async def test_the_projection_from_a_known_burn_rate(kit: TestKit, org: str, client: Client) -> None:
    now = kit.now()
    start, end = now - 10 * DAY, now + 20 * DAY
    ledger = kit.billing.ledger
    await ledger.start_period(StartPeriod(org, f"{org}:start", "starter", start, end, start))  # 3,000 credits
    await ledger.debit(org, "lead_enrichment", quantity=300, idempotency_key="big", now=start + DAY)  # 1,500
    http = await client("admin", org_id=org)
    r = await http.get(f"/v1/orgs/{org}/usage/projection")
    assert r.status_code == 200, r.text
    got = r.json()["projection"]
    as_of = datetime.fromisoformat(got["as_of"])
    assert now <= as_of <= kit.now()
    want = project(allocation_milli=to_milli(Decimal(3000)), consumed_milli=to_milli(Decimal(1500)),
                   period_start=start, period_end=end, as_of=as_of)
    assert got == {"period_start": _z(start), "period_end": _z(end), "as_of": _z(as_of),
                   "allocation": "3000.000", "consumed": "1500.000", "burn_per_day": str(want.burn_per_day),
                   "projected": str(want.projected), "runs_out_at": _z(want.runs_out_at or start),
                   "exceeds": True, "runway_alert_due": True}
    # 1,500 in 10 days: 150 a day, 4,500 by the end of 30, the 3,000 gone 20 days in (to within the request's time)
    assert abs(Decimal(got["burn_per_day"]) - 150) < 1 and abs(Decimal(got["projected"]) - 4500) < 1
    assert abs(datetime.fromisoformat(got["runs_out_at"]) - (start + 20 * DAY)) < timedelta(minutes=5)

    free = org + "-free"
    await kit.billing.open_wallet(free)  # a free wallet's period is the UTC day, its allocation the day's credits
    assert (await http.get(f"/v1/orgs/{free}/usage/projection")).status_code == 404  # another org for this key
    platform = await client("platform")
    day = (await platform.get(f"/v1/orgs/{free}/usage/projection")).json()["projection"]
    today = datetime.fromisoformat(day["as_of"]).replace(hour=0, minute=0, second=0, microsecond=0)
    assert (day["period_start"], day["period_end"], day["allocation"], day["exceeds"]) == (
        _z(today), _z(today + DAY), "50.000", False)


async def test_the_runway_alert_setting(kit: TestKit, org: str, client: Client) -> None:
    await kit.billing.open_wallet(org)
    http = await client("admin", org_id=org)
    url = f"/v1/orgs/{org}/settings/runway-alert"
    assert (await http.get(url)).json() == {"org_id": org, "enabled": False}
    assert (await http.put(url, json={"enabled": True})).json() == {"org_id": org, "enabled": True}
    assert (await http.get(url)).json() == {"org_id": org, "enabled": True}
    assert await kit.billing.runway_alert(org) is True
    for body in ({"enabled": "maybe"}, {}, {"enabled": False, "threshold": 3}, None):
        problem(await http.put(url, json=body), 422, "InvalidRequest")
    assert await kit.billing.runway_alert(org) is True  # unchanged by the refusals
    assert (await http.put(url, json={"enabled": False})).json() == {"org_id": org, "enabled": False}
    platform = await client("platform")
    problem(await platform.put(f"/v1/orgs/{org}-missing/settings/runway-alert", json={"enabled": True}),
            404, "UnknownOrganization")
    problem(await platform.get(f"/v1/orgs/{org}-missing/settings/runway-alert"), 404, "UnknownOrganization")


async def test_a_member_reads_its_own_usage_and_limit_not_another_members(kit: TestKit, org: str,
                                                                         client: Client) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await kit.billing.set_user_limit(org, "u1", Decimal(100))
    await kit.billing.debit(org, action="ai_chat", tier="smart", user_id="u1", idempotency_key="a1")  # 5
    await kit.billing.debit(org, action="ai_chat", tier="smart", user_id="u1", idempotency_key="a2")  # 5
    await kit.billing.debit(org, action="lead_enrichment", user_id="u1", idempotency_key="l1")  # 5
    await kit.billing.debit(org, action="insight", tier="smart", user_id="u2", idempotency_key="i1")  # 50
    sub = await kit.billing.subscription(org)
    assert sub.period_start is not None and sub.period_end is not None
    u1 = await client("member", org_id=org, user_id="u1")
    r = await u1.get(f"/v1/orgs/{org}/users/u1/usage")
    assert r.status_code == 200, r.text
    mine = r.json()
    assert mine == {
        "org_id": org, "user_id": "u1", "period_start": _z(sub.period_start.astimezone(UTC)),
        "period_end": _z(sub.period_end.astimezone(UTC)), "used": "15.000",
        "limit": "100.000", "limit_source": "user", "remaining": "85.000",
        "by_action": [
            {"action": "ai_chat", "uses": 2, "quantity": mine["by_action"][0]["quantity"], "credits": "10.000",
             "credits_per_use": "5.000"},
            {"action": "lead_enrichment", "uses": 1, "quantity": mine["by_action"][1]["quantity"],
             "credits": "5.000", "credits_per_use": "5.000"}]}
    assert [Decimal(a["quantity"]) for a in mine["by_action"]] == [2, 1]
    problem(await u1.get(f"/v1/orgs/{org}/users/u2/usage"), 403, "Forbidden")
    admin = await client("admin", org_id=org)
    theirs = (await admin.get(f"/v1/orgs/{org}/users/u2/usage")).json()
    assert (theirs["used"], theirs["limit"], theirs["limit_source"], theirs["remaining"]) == (
        "50.000", None, None, None)
    nobody = (await admin.get(f"/v1/orgs/{org}/users/u9/usage")).json()
    assert (nobody["used"], nobody["by_action"]) == ("0.000", [])
    problem(await admin.get(f"/v1/orgs/{org}/users/%20/usage"), 422, "InvalidRequest")
