"""Usage and transaction exports on the real PostgreSQL (UsageInsight.export): CSV and JSON lines parsed back equal
to the rows (exact decimals, RFC 3339 UTC times to the microsecond), streamed in chunks from a server-side cursor on
a connection of the export's own, and what happens when the reader stops early or the database goes away."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

import ledger.insight as insight_module
from ledger import Ledger
from ledger.insight import EXPORT_APPLICATION_NAME, UsageInsight
from ledger.pool import LeanPool
from models.errors import ServiceUnavailable
from models.insight_types import TRANSACTION_COLUMNS, USAGE_COLUMNS, UsageEvent
from models.ledger_types import GrantPack
from tests.conftest import T0, OrgFactory

D = Decimal
H = timedelta(hours=1)


@pytest.fixture
def insight(ledger: Ledger) -> UsageInsight:
    return UsageInsight(ledger)


async def _seed(ledger: Ledger, org: str) -> None:
    await ledger.debit(org, "ai_chat", tier="fast", user_id="u1", idempotency_key="late",
                       now=datetime(2026, 1, 16, 23, 59, 59, 999000, tzinfo=UTC))
    await ledger.debit(org, "lead_enrichment", user_id="u2", idempotency_key="mid",
                       now=datetime(2026, 1, 17, tzinfo=UTC))
    await ledger.debit(org, "sms", quantity=3, country="FR", idempotency_key="sms1",
                       now=datetime(2026, 1, 17, tzinfo=UTC))
    await ledger.debit(org, "call_transcription", quantity=D("2.5"), user_id="u1", idempotency_key="call",
                       now=datetime(2026, 1, 17, 2, tzinfo=UTC))
    await ledger.hold(org, "insight", tier="smart", user_id="u2", idempotency_key="h1", now=T0 + 40 * H)
    await ledger.commit(org, "h1", now=T0 + 40 * H + timedelta(microseconds=7))
    await ledger.grant_pack(GrantPack(org, f"{org}:pack", D("500"), T0 + 41 * H))


async def _all(it: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in it]


async def _events(insight: UsageInsight, org: str, **kw: datetime) -> list[UsageEvent]:
    page = await insight.log(org, limit=1000, **kw)  # type: ignore[arg-type]
    return list(reversed(page.events))  # the export is oldest first


def _none(text: str) -> str | None:
    return text or None


def _usage_from_csv(row: dict[str, str]) -> UsageEvent:
    assert row["source"] in ("debit", "hold")
    return UsageEvent(datetime.fromisoformat(row["at"]), row["idempotency_key"], row["source"],  # type: ignore[arg-type]
                      row["action"], _none(row["tier"]), D(row["quantity"]), _none(row["country"]),
                      _none(row["user_id"]), D(row["credits"]), json.loads(row["tags"]))


async def test_usage_exports_parse_back_to_the_rows(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    await _seed(ledger, org)
    events = await _events(insight, org)
    assert [e.idempotency_key for e in events] == ["late", "mid", "sms1", "call", "hold:h1"]

    body = b"".join(await _all(await insight.export(org, what="usage", fmt="csv")))
    text = body.decode()
    lines = text.split("\r\n")
    assert lines[0] == ",".join(USAGE_COLUMNS)
    assert lines[1] == "2026-01-16T23:59:59.999000Z,late,debit,ai_chat,fast,1,,u1,1.000,{}"
    assert lines[3] == "2026-01-17T00:00:00Z,sms1,debit,sms,,3,FR,,1.350,{}"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [_usage_from_csv(r) for r in rows] == events
    assert [r["credits"] for r in rows] == ["1.000", "5.000", "1.350", "7.500", "50.000"]  # exact strings
    assert rows[-1]["at"] == "2026-01-17T04:00:00.000007Z"

    body = b"".join(await _all(await insight.export(org, what="usage", fmt="jsonl")))
    objs = [json.loads(line) for line in body.decode().splitlines()]
    assert [list(o) for o in objs] == [list(USAGE_COLUMNS)] * 5
    assert objs[0] == {"at": "2026-01-16T23:59:59.999000Z", "idempotency_key": "late", "source": "debit",
                       "action": "ai_chat", "tier": "fast", "quantity": "1", "country": None, "user_id": "u1",
                       "credits": "1.000", "tags": {}}
    assert [UsageEvent(datetime.fromisoformat(o["at"]), o["idempotency_key"], o["source"], o["action"], o["tier"],
                       D(o["quantity"]), o["country"], o["user_id"], D(o["credits"]), o["tags"])
            for o in objs] == events

    # A range: [since, until).
    since, until = datetime(2026, 1, 17, tzinfo=UTC), T0 + 40 * H
    body = b"".join(await _all(await insight.export(org, what="usage", fmt="csv", since=since, until=until)))
    assert [_usage_from_csv(r) for r in csv.DictReader(io.StringIO(body.decode()))] == \
        await _events(insight, org, since=since, until=until)
    assert [e.idempotency_key for e in await _events(insight, org, since=since, until=until)] == [
        "mid", "sms1", "call"]
    # Nothing in the range: the header alone, or nothing.
    empty = {"since": T0 + 1000 * H}
    assert b"".join(await _all(await insight.export(org, what="usage", fmt="csv", **empty))) == \
        (",".join(USAGE_COLUMNS) + "\r\n").encode()
    assert await _all(await insight.export(org, what="usage", fmt="jsonl", **empty)) == []


async def test_transaction_exports_parse_back_to_the_entries(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    await _seed(ledger, org)
    entries = await ledger.transactions(org)
    assert [t.kind for t in entries] == ["grant", "debit", "debit", "debit", "debit", "hold", "release", "debit",
                                         "grant"]
    body = b"".join(await _all(await insight.export(org, what="transactions", fmt="csv")))
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == list(TRANSACTION_COLUMNS)
    assert [(int(i), datetime.fromisoformat(at), kind, D(credits), _none(bucket), ref)
            for i, at, kind, credits, bucket, ref in rows[1:]] == \
        [(t.id, t.at, t.kind, t.credits, t.bucket, t.ref) for t in entries]
    assert [r[3] for r in rows[1:]] == ["10000.000", "-1.000", "-5.000", "-1.350", "-7.500", "-50.000", "50.000",
                                        "-50.000", "500.000"]
    body = b"".join(await _all(await insight.export(org, what="transactions", fmt="jsonl")))
    objs = [json.loads(line) for line in body.decode().splitlines()]
    assert [(o["id"], datetime.fromisoformat(o["at"]), o["kind"], D(o["credits"]), o["bucket"], o["ref"])
            for o in objs] == [(t.id, t.at, t.kind, t.credits, t.bucket, t.ref) for t in entries]
    assert objs[5]["bucket"] is None and objs[5]["ref"] == "hold:h1"  # a reservation has no bucket
    since = T0 + 40 * H
    body = b"".join(await _all(await insight.export(org, what="transactions", fmt="jsonl", since=since)))
    assert [json.loads(line)["kind"] for line in body.decode().splitlines()] == ["hold", "release", "debit", "grant"]


async def test_an_export_streams_in_chunks_the_same_bytes(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await new_org("pro")
    for i in range(7):
        await ledger.debit(org, "ai_chat", tier="fast", idempotency_key=f"k{i}", now=T0 + i * H)
    whole = await _all(await insight.export(org, what="usage", fmt="jsonl"))
    assert len(whole) == 1
    monkeypatch.setattr(insight_module, "EXPORT_CHUNK_ROWS", 3)
    chunks = await _all(await insight.export(org, what="usage", fmt="jsonl"))
    assert [c.count(b"\n") for c in chunks] == [3, 3, 1]
    assert b"".join(chunks) == whole[0]
    csv_chunks = await _all(await insight.export(org, what="usage", fmt="csv"))
    assert [c.count(b"\r\n") for c in csv_chunks] == [1, 3, 3, 1]  # the header, then the rows


async def _export_backends(ledger: Ledger) -> int:
    """Export connections the server still has, once those closed have gone (a backend exits after its client
    closes; the wait is bounded)."""
    left = -1
    for _ in range(100):
        row = await ledger.pool.fetchone(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (EXPORT_APPLICATION_NAME,))
        assert row is not None
        if (left := int(row[0])) == 0:
            break
        await asyncio.sleep(0.05)
    return left


async def test_an_export_holds_no_pool_connection_and_closes_its_own_when_the_reader_stops(
    database_url: str, new_org: OrgFactory, monkeypatch: pytest.MonkeyPatch, ledger: Ledger
) -> None:
    org = await new_org("pro")
    for i in range(10):
        await ledger.debit(org, "ai_chat", tier="fast", idempotency_key=f"k{i}", now=T0 + i * H)
    monkeypatch.setattr(insight_module, "EXPORT_CHUNK_ROWS", 2)
    # A ledger of one pooled connection that gives up waiting for it in a second.
    pool = LeanPool(database_url, 1, checkout_timeout=1.0)
    await pool.open()
    small = Ledger(pool)
    try:
        it = await UsageInsight(small).export(org, what="usage", fmt="csv")
        assert (await anext(it)).startswith(b"at,")
        assert (await anext(it)).count(b"\r\n") == 2
        # Mid-export, the one pooled connection is free: a debit goes through.
        await small.debit(org, "ai_chat", tier="fast", idempotency_key="during", now=T0 + 20 * H)
        row = await pool.fetchone("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                  (EXPORT_APPLICATION_NAME,))
        assert row == (1,)
        await it.aclose()  # the reader goes away (a dropped download)
        assert await _export_backends(small) == 0
    finally:
        await small.close()


async def test_the_database_lost_mid_export_is_a_typed_error(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await new_org("pro")
    for i in range(10):
        await ledger.debit(org, "ai_chat", tier="fast", idempotency_key=f"k{i}", now=T0 + i * H)
    monkeypatch.setattr(insight_module, "EXPORT_CHUNK_ROWS", 2)
    it = await insight.export(org, what="transactions", fmt="jsonl")
    assert (await anext(it)).count(b"\n") == 2
    killed = await ledger.pool.fetchall(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (EXPORT_APPLICATION_NAME,))
    assert killed == [(True,)]
    with pytest.raises(ServiceUnavailable, match="lost during the export"):
        async for _ in it:
            pass
    assert await _export_backends(ledger) == 0
    # The next export runs.
    assert len(b"".join(await _all(await insight.export(org, what="transactions", fmt="jsonl"))).splitlines()) == 11


async def test_an_export_with_the_database_away_is_a_typed_error(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    it = await insight.export(org, what="usage", fmt="csv")
    # The export's own connection is opened when the reading starts; a server that refuses it is a typed error.
    insight.pool.url, url = "host=/nonexistent-dir port=1 user=postgres dbname=postgres", insight.pool.url
    try:
        with pytest.raises(ServiceUnavailable, match="could not reach the database"):
            await anext(it)
    finally:
        insight.pool.url = url


async def test_tags_export_as_a_json_column_and_a_json_object(
    ledger: Ledger, new_org: OrgFactory, insight: UsageInsight
) -> None:
    org = await new_org("pro")
    tags = {"contact": 'Zoë "Z", Paris', "campaign": "spring"}
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="t1", tags=tags, now=T0)
    await ledger.debit(org, "ai_chat", tier="fast", idempotency_key="t2", now=T0 + H)
    events = await _events(insight, org)
    assert [e.tags for e in events] == [tags, {}]
    body = b"".join(await _all(await insight.export(org, what="usage", fmt="csv")))
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [json.loads(r["tags"]) for r in rows] == [tags, {}]
    assert [_usage_from_csv(r) for r in rows] == events
    body = b"".join(await _all(await insight.export(org, what="usage", fmt="jsonl")))
    assert [json.loads(line)["tags"] for line in body.decode().splitlines()] == [tags, {}]


def test_credits_text_is_the_exact_decimal_string() -> None:
    from ledger.insight import _milli_text
    from models.credits import MAX_CREDITS_MILLI, from_milli
    for milli in (-MAX_CREDITS_MILLI, -1350, -1000, -5, 0, 5, 999, 1000, 7500, MAX_CREDITS_MILLI):
        assert _milli_text(milli) == str(from_milli(milli))


async def test_exports_past_the_process_cap_are_refused_until_one_ends(
    ledger: Ledger, new_org: OrgFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each export holds a connection and a transaction for as long as its reader downloads: past max_exports at
    once, another is refused (503: retry), before a connection is opened; a stream never started holds no slot."""
    org = await new_org("pro")
    for i in range(6):
        await ledger.debit(org, "ai_chat", tier="fast", idempotency_key=f"k{i}", now=T0 + i * H)
    monkeypatch.setattr(insight_module, "EXPORT_CHUNK_ROWS", 2)
    capped = UsageInsight(ledger, max_exports=2)
    never_started = await capped.export(org, what="usage", fmt="csv")
    running = [await capped.export(org, what="usage", fmt="jsonl") for _ in range(2)]
    for it in running:
        assert (await anext(it)).count(b"\n") == 2  # each mid-download, its connection open
    with pytest.raises(ServiceUnavailable, match="2 exports are running"):
        await capped.export(org, what="transactions", fmt="csv")
    with pytest.raises(ServiceUnavailable, match="2 exports are running"):
        await anext(never_started)  # created before the cap was reached: refused when it starts
    assert await _export_backends_now(ledger) == 2
    await running[0].aclose()  # one reader goes away: its slot is free again
    assert len(b"".join(await _all(await capped.export(org, what="usage", fmt="jsonl"))).splitlines()) == 6
    assert b"".join([c async for c in running[1]]).count(b"\n") == 4  # the other finishes its rows
    assert await _export_backends(ledger) == 0
    assert len(await _all(await capped.export(org, what="transactions", fmt="jsonl"))) > 0


async def _export_backends_now(ledger: Ledger) -> int:
    row = await ledger.pool.fetchone("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (EXPORT_APPLICATION_NAME,))
    assert row is not None
    return int(row[0])
