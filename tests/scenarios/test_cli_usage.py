"""`billing usage ...`, `billing quota ...`, `billing runway-alert`, `billing debit --tag` and the usage bars of
`billing status`, against the kit's database and Temporal (the CLI configured as an operator's), run in this process
with typer's CliRunner as tests/scenarios/test_cli_contracts.py does: every view prints the exact figures of a
seeded history, bad input is a refusal with exit status 2 that changes nothing, an export written to a file reads
back row for row, and the bars' colours turn at 80% and 100% (the pure rule, no terminal needed).

The history is seeded through the ledger with explicit times (Ledger.debit(now=)) in a period that ended before
today: the CLI's clock is the wall clock, so its projection is the whole period's, exact. Status and quotas use a
subscription running now. This module never advances the kit's clock."""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from cli import BAR_WIDTH, usage_bar
from models.insight_types import TRANSACTION_COLUMNS, USAGE_COLUMNS
from models.ledger_types import GrantPack, StartPeriod
from testkit import TestKit
from tests.scenarios.test_cli_contracts import EMAIL, billing, ok, refused, text

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)   # the seeded period: 2026-01-15 12:00 to 2026-02-15 12:00 UTC
END = T0 + timedelta(days=31)
# (key, action, quantity, user, tags, at): 28.5 credits in all.
HISTORY = [
    ("e1", "lead_enrichment", 1, "u1", {"campaign": "spring", "country": "FR"}, datetime(2026, 1, 16, 9, tzinfo=UTC)),
    ("e2", "lead_enrichment", 1, "u2", {"campaign": "spring"}, datetime(2026, 1, 16, 23, 59, 59, tzinfo=UTC)),
    ("e3", "call_transcription", 4, "u1", {"campaign": "autumn"}, datetime(2026, 1, 17, tzinfo=UTC)),
    ("e4", "lead_enrichment", 1, "u1", {"campaign": "spring", "country": "FR"}, datetime(2026, 1, 17, 10, tzinfo=UTC)),
    ("e5", "email_validation", 3, None, None, datetime(2026, 1, 18, 8, tzinfo=UTC)),
]


async def seeded(kit: TestKit, org: str, *, u1_limit: Decimal | None = None) -> str:
    """A pro wallet over the past period with HISTORY and a 500-credit pack (no subscription: reads only); u1's
    limit set before the history when given (the ledger counts a user's use against a limit from then on)."""
    ledger = kit.billing.ledger
    await ledger.start_period(StartPeriod(org, f"{org}:start", "pro", T0, END, T0))
    if u1_limit is not None:
        await ledger.set_user_limit(org, "u1", u1_limit)
    for key, action, quantity, user, tags, at in HISTORY:
        await ledger.debit(org, action, idempotency_key=key, quantity=quantity, user_id=user, tags=tags, now=at)
    await ledger.grant_pack(GrantPack(org, f"{org}:pack", Decimal(500), datetime(2026, 1, 20, tzinfo=UTC)))
    return org


def cells(filled: int) -> str:
    """A bar of BAR_WIDTH cells, `filled` of them full."""
    return "\u2588" * filled + "\u2591" * (BAR_WIDTH - filled)


def keys(out: str) -> list[str]:
    """The event keys of a printed log, in the order printed."""
    return [w for w in out.split() if w in {h[0] for h in HISTORY}]


def cursor(out: str) -> str | None:
    if out.endswith("last page"):
        return None
    return out.rsplit("next page: --cursor ", 1)[1].strip()


# -- the bars: a pure rule --------------------------------------------------------------------------------


def test_a_bar_is_green_under_80_percent_amber_from_80_and_red_at_100() -> None:
    limit = Decimal(10000)
    cases = [("0", 0, "green", 0), ("7999.999", 79, "green", 19), ("8000", 80, "yellow", 19),
             ("9999.999", 99, "yellow", 23), ("10000", 100, "red", 24), ("12500", 125, "red", 24)]
    for used, percent, colour, filled in cases:
        bar = usage_bar("credits", Decimal(used), limit)
        assert (bar.percent, bar.colour) == (percent, colour), (used, bar)
        assert bar.cells == cells(filled), (used, bar.cells)
    # 79.99% shows 79% and stays green: the colour follows the exact figures, not a rounded percent.
    assert usage_bar("storage", Decimal("0.3999"), Decimal("0.5")).colour == "green"
    assert usage_bar("storage", Decimal("0.4"), Decimal("0.5")).colour == "yellow"
    assert usage_bar("storage", Decimal("0.4"), Decimal("0.5")).markup().endswith(" 80% 0.4 of 0.5")
    assert usage_bar("credits", Decimal("7900"), limit).markup() == \
        f"[green]{cells(18)}[/green] 79% 7,900 of 10,000"
    unlimited = usage_bar("sessions", Decimal(42), None)
    assert (unlimited.percent, unlimited.colour, unlimited.markup().split("] ")[-1]) == (None, "dim",
                                                                                         "42 (no limit)")
    assert usage_bar("credits", Decimal(5), Decimal(0)).limit is None  # no allocation: no bar to fill


# -- the views over a seeded history ---------------------------------------------------------------------


async def test_the_log_filters_and_pages_without_gaps_or_repeats(kit: TestKit, org: str) -> None:
    await seeded(kit, org)
    out = await ok(kit, "usage", "log", org)
    assert keys(out) == ["e5", "e4", "e3", "e2", "e1"] and out.endswith("last page"), out
    assert "2026-01-17 10:00:00 e4 debit lead_enrichment 1 u1 5 campaign=spring country=FR" in out, out
    assert "2026-01-17 00:00:00 e3 debit call_transcription 4 u1 12 campaign=autumn" in out, out
    assert "2026-01-18 08:00:00 e5 debit email_validation 3 1.5" in out, out

    # Two tags, a page of 2 at a time: every spring event once, newest first.
    seen: list[str] = []
    page = await ok(kit, "usage", "log", org, "--tag", "campaign=spring", "--limit", "2")
    pages = 1
    while (after := cursor(page)) is not None:
        seen += keys(page)
        page = await ok(kit, "usage", "log", org, "--tag", "campaign=spring", "--limit", "2", "--cursor", after)
        pages += 1
    seen += keys(page)
    assert (seen, pages) == (["e4", "e2", "e1"], 2)
    out = await ok(kit, "usage", "log", org, "--tag", "campaign=spring", "--tag", "country=FR")
    assert keys(out) == ["e4", "e1"], out
    out = await ok(kit, "usage", "log", org, "--user", "u1", "--action", "lead_enrichment")
    assert keys(out) == ["e4", "e1"], out
    out = await ok(kit, "usage", "log", org, "--since", "2026-01-17", "--until", "2026-01-18")
    assert keys(out) == ["e4", "e3"], out
    out = await ok(kit, "usage", "log", org, "--since", "2026-01-16T23:59:59Z", "--until", "2026-01-17T00:00:01Z")
    assert keys(out) == ["e3", "e2"], out
    assert keys(await ok(kit, "usage", "log", org, "--tier", "smart")) == []

    for args, message in [
        (("--tag", "campaign"), "--tag must be name=value (campaign=spring), got 'campaign'"),
        (("--tag", "Campaign=spring"), "a tag's name is 1-32 characters"),
        (("--tag", "campaign=spring", "--tag", "campaign=autumn"), "--tag 'campaign' is given twice"),
        (("--limit", "0"), "limit is a whole number of events from 1 to 1000"),
        (("--limit", "1001"), "limit is a whole number of events from 1 to 1000"),
        (("--cursor", "not-a-cursor"), "not a usage log cursor"),
        (("--since", "2026-01-17T00:00:00"), "has no time zone"),
        (("--since", "2026-01-18", "--until", "2026-01-17"), "is before since"),
    ]:
        out = await refused(kit, "usage", "log", org, *args)
        assert out.startswith("InvalidRequest: ") and message in out, (args, out)
    assert "UnknownOrganization" in await refused(kit, "usage", "log", f"{org}-none")


async def test_summary_series_lifetime_and_the_older_grouped_form(kit: TestKit, org: str) -> None:
    await seeded(kit, org)
    out = await ok(kit, "usage", "summary", org)
    assert ("lead_enrichment 3 3 15 5 call_transcription 1 4 12 12 email_validation 1 3 1.5 1.5 "
            "total: 5 uses, 28.5 credits") in out, out
    out = await ok(kit, "usage", "summary", org, "--user", "u1", "--since", "2026-01-17")
    assert "lead_enrichment 1 1 5 5" in out and "call_transcription 1 4 12 12" in out, out
    assert "total: 2 uses, 17 credits" in out and "email_validation" not in out, out

    # Day buckets in UTC, dense: every day of the range for every action seen in it, zeros included.
    out = await ok(kit, "usage", "series", org, "--since", "2026-01-16", "--until", "2026-01-19", "--by", "action")
    for row in ["2026-01-16 lead_enrichment 2 10", "2026-01-17 lead_enrichment 1 5", "2026-01-18 lead_enrichment 0 0",
                "2026-01-16 call_transcription 0 0", "2026-01-17 call_transcription 1 12",
                "2026-01-18 email_validation 1 1.5", "2026-01-16 email_validation 0 0"]:
        assert row in out, (row, out)
    assert len([w for w in out.split() if w.startswith("2026-01-1")]) == 9, out
    # Hour buckets across midnight: 23:59:59 in the day before, 00:00:00 in the next.
    out = await ok(kit, "usage", "series", org, "--since", "2026-01-16T23:00:00Z", "--until", "2026-01-17T01:00:00Z",
                   "--bucket", "hour")
    assert "2026-01-16 23:00 1 5 2026-01-17 00:00 1 12" in out, out
    out = await ok(kit, "usage", "series", org, "--since", "2026-01-16", "--until", "2026-01-18", "--by", "user")
    assert "2026-01-16 u1 1 5" in out and "2026-01-16 u2 1 5" in out and "2026-01-17 u1 2 17" in out, out
    for args, message in [(("--bucket", "week"), "week"), (("--by", "tier"), "tier"),
                          (("--until", "2026-01-15"), "before since")]:
        base = {"--since": "2026-01-16", "--until": "2026-01-19"}
        extra = dict(zip(args[::2], args[1::2], strict=True))
        flat = [x for kv in (base | extra).items() for x in kv]
        out = await refused(kit, "usage", "series", org, *flat)
        assert out.startswith("InvalidRequest: ") and message in out, (args, out)
    assert "Missing option '--since'" in await refused(kit, "usage", "series", org, "--until", "2026-01-19")

    out = await ok(kit, "usage", "lifetime", org)
    assert out == (f"{org} since 2026-01-15: added 10,500 credits (plan 10,000, packs 500), used 28.5, "
                   "expired 0"), out

    # The older form, `billing usage ORG --by ...`, answers as before (now also over a range).
    out = await ok(kit, "usage", org, "--by", "user")
    assert "u1 3 6 22 u2 1 1 5 - 1 3 1.5" in out, out  # '-': usage without a user
    assert "lead_enrichment 3 3 15" in await ok(kit, "usage", org)
    out = await ok(kit, "usage", "--by", "action", org, "--since", "2026-01-17")
    assert "lead_enrichment 1 1 5" in out and "call_transcription 1 4 12" in out, out
    assert await ok(kit, "usage", "grouped", org, "--by", "user") == await ok(kit, "usage", org, "--by", "user")


async def test_projection_runway_alert_and_member_usage(kit: TestKit, org: str) -> None:
    await seeded(kit, org, u1_limit=Decimal(50))
    # Today is past the seeded period: its projection is the whole period's, at 28.5 credits in 31 days.
    out = await ok(kit, "usage", "projection", org)
    assert out == (f"{org}: period 2026-01-15 12:00 to 2026-02-15 12:00, as of 2026-02-15 12:00: used 28.5 of "
                   "10,000, 0.919 a day; projected 28.5 by the period's end, within the allocation; "
                   "runway alert off"), out
    assert await ok(kit, "runway-alert", org) == f"{org}: runway alert off"
    assert await ok(kit, "runway-alert", org, "on") == f"{org}: runway alert on"
    assert await kit.billing.runway_alert(org)
    assert out.replace("alert off", "alert on") == await ok(kit, "usage", "projection", org)
    out = await refused(kit, "runway-alert", org, "maybe")
    assert out == "InvalidRequest: the runway alert is 'on' or 'off', got 'maybe'", out
    assert await kit.billing.runway_alert(org)
    assert await ok(kit, "runway-alert", org, "off") == f"{org}: runway alert off"
    assert "UnknownOrganization" in await refused(kit, "runway-alert", f"{org}-none", "on")

    out = await ok(kit, "usage", "member", org, "u1")
    assert out.startswith(f"{org}: u1 used 22 credits this period (2026-01-15 12:00 to 2026-02-15 12:00); "
                          "limit 50 (their own), 28 remaining"), out
    assert "call_transcription 1 4 12 12 lead_enrichment 2 2 10 5" in out, out  # most credits first
    out = await ok(kit, "usage", "member", org, "u3")
    assert out.startswith(f"{org}: u3 used 0 credits this period (2026-01-15 12:00 to 2026-02-15 12:00); "
                          "no limit"), out
    await kit.billing.set_user_limit(org, "*", Decimal(40))
    assert "; limit 40 (the organization's default), 40 remaining" in await ok(kit, "usage", "member", org, "u3")
    assert "InvalidRequest" in await refused(kit, "usage", "member", org, "bad user")
    assert "UnknownOrganization" in await refused(kit, "usage", "member", f"{org}-none", "u1")
    assert "UnknownOrganization" in await refused(kit, "usage", "projection", f"{org}-none")


async def test_exports_stream_to_a_file_and_to_stdout_and_refusals_write_nothing(
    kit: TestKit, org: str, tmp_path: Path
) -> None:
    await seeded(kit, org)
    target = tmp_path / "usage.csv"
    out = await ok(kit, "usage", "export", org, "--what", "usage", "--format", "csv", "--output", str(target))
    size = target.stat().st_size
    assert out == f"{org}: usage exported to {target} ({size:,} bytes, csv)", out
    with target.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(USAGE_COLUMNS)
    assert [r[1] for r in rows[1:]] == ["e1", "e2", "e3", "e4", "e5"]  # oldest first
    first = dict(zip(USAGE_COLUMNS, rows[1], strict=True))
    assert first | {"tags": json.loads(first["tags"])} == {
        "at": "2026-01-16T09:00:00Z", "idempotency_key": "e1", "source": "debit", "action": "lead_enrichment",
        "tier": "", "quantity": "1", "country": "", "user_id": "u1", "credits": "5.000",
        "tags": {"campaign": "spring", "country": "FR"}}, first
    assert sum(Decimal(r[8]) for r in rows[1:]) == Decimal("28.5")
    assert sorted(os.listdir(tmp_path)) == ["usage.csv"]  # no part file left

    # A range, as JSON lines, to standard output.
    result = await billing(kit, "usage", "export", org, "--what", "usage", "--format", "jsonl",
                           "--since", "2026-01-17", "--until", "2026-01-18")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["idempotency_key"], r["credits"], r["tags"]) for r in lines] == [
        ("e3", "12.000", {"campaign": "autumn"}), ("e4", "5.000", {"campaign": "spring", "country": "FR"})]

    target = tmp_path / "transactions.jsonl"
    await ok(kit, "usage", "export", org, "--what", "transactions", "--format", "jsonl", "--output", str(target))
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert all(list(r) == list(TRANSACTION_COLUMNS) for r in exported)
    ledger = await kit.billing.transactions(org)
    assert [(r["id"], r["kind"], Decimal(r["credits"])) for r in exported] == [
        (t.id, t.kind, t.credits) for t in ledger]
    assert sum(Decimal(r["credits"]) for r in exported) == Decimal("10471.5")  # 10,000 + 500 - 28.5

    # Refused before anything is written: no file, no part file; the refusal on standard error, standard output
    # (the export's own) empty.
    bad = tmp_path / "bad.csv"
    for args, message in [
        (("--what", "invoices"), "--what must be 'usage' or 'transactions', got 'invoices'"),
        (("--what", "usage", "--format", "xml"), "an export's format is 'csv' or 'jsonl'"),
        (("--what", "usage", "--since", "yesterday"), "--since must be a day (2026-01-01) or a time"),
        (("--what", "usage", "--since", "2026-01-18", "--until", "2026-01-17"), "is before since"),
    ]:
        for output in (("--output", str(bad)), ()):
            result = await billing(kit, "usage", "export", org, *args, *output)
            assert result.exit_code == 2 and result.stdout == "", (args, result.output)
            assert text(result.stderr).startswith("InvalidRequest: ") and message in text(result.stderr), args
    out = await refused(kit, "usage", "export", f"{org}-none", "--what", "usage", "--output", str(bad))
    assert out.startswith("UnknownOrganization"), out
    assert "Missing option '--what'" in await refused(kit, "usage", "export", org)
    # A file that cannot be written: no such directory; a directory by that name (the rows were streamed to the
    # part file, the last step fails): a clear refusal, and no part file is left behind.
    out = await refused(kit, "usage", "export", org, "--what", "usage", "--output", str(tmp_path / "no" / "x.csv"))
    assert out.startswith(f"FileNotFoundError: cannot write {tmp_path / 'no' / 'x.csv'}: "), out
    (tmp_path / "taken").mkdir()
    out = await refused(kit, "usage", "export", org, "--what", "usage", "--output", str(tmp_path / "taken"))
    assert out.startswith(f"IsADirectoryError: cannot write {tmp_path / 'taken'}: "), out
    assert sorted(os.listdir(tmp_path)) == ["taken", "transactions.jsonl", "usage.csv"]
    assert os.listdir(tmp_path / "taken") == []


# -- tags on a debit, quotas, status -------------------------------------------------------------------


async def test_debit_tags_are_stored_and_bad_tags_change_nothing(kit: TestKit, org: str) -> None:
    now = datetime.now(UTC)  # the CLI meters on the wall clock: a period around it
    await kit.billing.ledger.start_period(StartPeriod(org, f"{org}:start", "pro", now - timedelta(days=1),
                                                      now + timedelta(days=30), now - timedelta(days=1)))
    out = await ok(kit, "debit", org, "lead_enrichment", "--key", "t1", "--user", "u1",
                   "--tag", "campaign=spring", "--tag", "country=FR")
    assert out == f"{org}: charged 5.000 credits, 9995.000 available", out
    [event] = (await kit.billing.usage_log(org)).events
    assert (event.idempotency_key, event.tags) == ("t1", {"campaign": "spring", "country": "FR"})
    assert "t1 debit lead_enrichment 1 u1 5 campaign=spring country=FR" in await ok(kit, "usage", "log", org)
    # The same key and tags: the first result; other tags under the key: a conflict, nothing written.
    assert out + " (repeat: first result)" == await ok(
        kit, "debit", org, "lead_enrichment", "--key", "t1", "--user", "u1", "--tag", "country=FR",
        "--tag", "campaign=spring")
    assert "IdempotencyConflict" in await refused(kit, "debit", org, "lead_enrichment", "--key", "t1", "--user", "u1",
                                                  "--tag", "campaign=autumn", "--tag", "country=FR")
    many = [x for i in range(11) for x in ("--tag", f"t{i}=v")]
    for args, message in [
        (("--tag", "campaign"), "--tag must be name=value (campaign=spring), got 'campaign'"),
        (("--tag", "=spring"), "a tag's name is 1-32 characters"),
        (("--tag", "Campaign=spring"), "a tag's name is 1-32 characters"),
        (("--tag", "campaign="), "tag 'campaign' must be 1-100 characters"),
        (("--tag", f"campaign={'x' * 101}"), "tag 'campaign' must be 1-100 characters, got 101"),
        (("--tag", "campaign=a\tb"), "tag 'campaign' holds a control character"),
        (("--tag", "campaign=a", "--tag", "campaign=b"), "--tag 'campaign' is given twice"),
        (tuple(many), "at most 10 tags, got 11"),
    ]:
        out = await refused(kit, "debit", org, "lead_enrichment", "--key", "t2", *args)
        assert out.startswith("InvalidRequest: ") and message in out, (args, out)
    assert [e.idempotency_key for e in (await kit.billing.usage_log(org)).events] == ["t1"]
    assert (await kit.billing.balance(org)).available == Decimal(9995)


async def test_quotas_recorded_and_status_shows_usage_bars(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    # 79% of the period's 10,000 credits: 1,580 lead enrichments at 5.
    await kit.billing.debit(org, action="lead_enrichment", quantity=1580, idempotency_key="bulk")
    out = await ok(kit, "status", org)
    assert "pro" in out and "usage this period" in out, out
    assert f"credits {cells(18)} 79% 7,900 of 10,000" in out, out
    for quota, limit in [("sessions", "25,000"), ("events", "1,000,000"), ("enrichments", "5,000"),
                         ("storage", "100")]:
        assert f"{quota} {cells(0)} 0% 0 of {limit}" in out, (quota, out)

    out = await ok(kit, "quota", "record", org, "enrichments", "--key", "q1", "--quantity", "4000")
    assert out == f"{org}: enrichments +4,000, 4,000 of 5,000 warning: 80% reached", out
    assert await ok(kit, "quota", "record", org, "enrichments", "--key", "q1", "--quantity", "4000") == \
        f"{org}: enrichments +4,000, 4,000 of 5,000 (repeat: first result) warning: 80% reached"
    out = await refused(kit, "quota", "record", org, "enrichments", "--key", "q2", "--quantity", "1001")
    assert out.startswith("QuotaExceeded"), out
    out = await ok(kit, "quota", "record", org, "storage", "--key", "q3", "--quantity", "100.5")
    assert out == f"{org}: storage +100.5, 100.5 of 100 (soft) warning: 80% reached", out
    await ok(kit, "quota", "record", org, "sessions", "--key", "q4")
    for args, message in [(("enrichments", "--quantity", "0"), "above 0"),
                          (("enrichments", "--quantity", "1,5"), "--quantity must be a decimal number"),
                          (("enrichments", "--quantity", "0.0001"), "at most 3 decimal places"),
                          (("seats",), "unknown quota")]:
        out = await refused(kit, "quota", "record", org, *args, "--key", "q9")
        assert out.startswith("InvalidRequest: ") and message in out, (args, out)

    await kit.billing.debit(org, action="lead_enrichment", quantity=20, idempotency_key="more")
    out = await ok(kit, "status", org)
    assert f"credits {cells(19)} 80% 8,000 of 10,000" in out, out
    assert f"enrichments {cells(19)} 80% 4,000 of 5,000" in out, out
    assert f"storage {cells(24)} 100% 100.5 of 100" in out, out
    assert f"sessions {cells(0)} 0% 1 of 25,000" in out, out
    assert f"events {cells(0)} 0% 0 of 1,000,000" in out, out
    shown = await ok(kit, "quota", "show", org)
    assert f"{org} quotas this period" in shown and " 80% 4,000 of 5,000" in shown and "credits" not in shown
    assert {q.quota: q.used for q in await kit.billing.quotas(org)} == {
        "sessions": Decimal(1), "events": Decimal(0), "enrichments": Decimal(4000), "storage": Decimal("100.5")}
    assert "UnknownOrganization" in await refused(kit, "quota", "show", f"{org}-none")
