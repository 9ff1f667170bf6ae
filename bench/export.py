"""The usage export's memory and speed, streamed against materialised, measured in one run on one fresh server.

Seeds a million usage rows for one organization (generate_series straight into usage_events: a quarter tagged, a
third with a tier, a third with a country), then, each in a process of its own so that each has its own memory
high-water mark: the streamed export (UsageInsight.export: a server-side cursor, EXPORT_CHUNK_ROWS rows at a time,
each chunk formatted and handed on) and a baseline that materialises (one fetchall of the same statement, then the
same formatting of every row into one body), in CSV and in JSON lines; then the streamed export over the first
100,000 rows, to show its peak does not grow with the rows. Peak memory is the process's RSS high-water mark
(getrusage ru_maxrss) less the mark just before the export began (interpreter, imports, connections). Rows/s from
the call to the last byte, each side's best of --rounds (alternating), with the client's CPU seconds. Output goes
nowhere (counted, not kept): a server streams it to the client.

    python -m bench.export [--rows 1000000]

Last line: mem_ratio_csv=R1 mem_ratio_jsonl=R2 speed_ratio_csv=R3 speed_ratio_jsonl=R4 (streamed / materialised).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psycopg import AsyncConnection

from ledger import Ledger
from ledger.insight import EXPORT_CHUNK_ROWS, UsageInsight, export_format
from ledger.migrate import migrate
from models.ledger_types import StartPeriod
from stack.postgres import start_embedded

ORG = "bench-export"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
ROOT = Path(__file__).resolve().parents[1]


async def seed(url: str, rows: int) -> None:
    led = await Ledger.open(url, pool_size=1)
    try:
        await led.start_period(StartPeriod(ORG, f"{ORG}:start", "pro", T0, T0 + timedelta(days=3650), T0))
    finally:
        await led.close()
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO usage_events (org_id, idem_key, source, action, tier, quantity, country, user_id, cost, "
            "                          tags, created_at) "
            "SELECT %s, 'k' || lpad(i::text, 8, '0'), CASE WHEN i %% 10 = 0 THEN 'hold' ELSE 'debit' END, "
            "       (ARRAY['ai_chat', 'lead_enrichment', 'sms'])[1 + i %% 3], "
            "       CASE WHEN i %% 3 = 0 THEN 'fast' END, 1 + i %% 5, CASE WHEN i %% 3 = 2 THEN 'FR' END, "
            "       'user-' || (i %% 50), 450 + (i %% 7000), "
            "       CASE WHEN i %% 4 = 0 THEN jsonb_build_object('campaign', 'spring-' || (i %% 10), "
            "                                                     'country', 'FR') END, "
            "       %s::timestamptz + i * interval '1 second' "
            "FROM generate_series(1, %s) i", (ORG, T0, rows))
        await conn.execute("VACUUM ANALYZE usage_events")


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux


async def child(url: str, mode: str, fmt: str, until: str | None) -> dict[str, Any]:
    """One measurement, in this process: the export's bytes and lines, seconds, RSS high-water mark growth."""
    led = await Ledger.open(url, pool_size=1)
    insight = UsageInsight(led)
    hi = datetime.fromisoformat(until) if until else None
    try:
        before = _maxrss_kb()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        size = lines = 0
        if mode == "stream":
            async for chunk in await insight.export(ORG, what="usage", fmt=fmt, until=hi):  # type: ignore[arg-type]
                size += len(chunk)
                lines += chunk.count(b"\n")
        else:  # materialised: every row fetched, then every row formatted into one body
            sql, shape, encode, header = export_format("usage", fmt)  # type: ignore[arg-type]
            async with await AsyncConnection.connect(url) as conn:
                cur = await conn.execute(sql, (ORG, datetime(1970, 1, 1, tzinfo=UTC),
                                               hi or datetime(9999, 1, 1, tzinfo=UTC)))
                rows = await cur.fetchall()
            body = header + encode([shape(r) for r in rows])
            size, lines = len(body), body.count(b"\n")
        seconds = time.perf_counter() - start
        after = _maxrss_kb()
        cpu_end = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = cpu_end.ru_utime + cpu_end.ru_stime - cpu.ru_utime - cpu.ru_stime
    finally:
        await led.close()
    rows_out = lines - (1 if fmt == "csv" else 0)
    return {"mode": mode, "fmt": fmt, "rows": rows_out, "bytes": size, "seconds": seconds,
            "rows_per_s": rows_out / seconds, "cpu_s": cpu_s, "peak_mb": (after - before) / 1024,
            "maxrss_mb": after / 1024}


async def reads(url: str, rows: int) -> None:
    """The other reads over the same million rows, once each after a warm-up (milliseconds): what a dashboard
    waits for. The tag filter that matches nothing walks the whole history (no index on tags)."""
    led = await Ledger.open(url, pool_size=2)
    insight = UsageInsight(led)
    end = T0 + timedelta(seconds=rows + 1)
    first = await insight.log(ORG)
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("log, first page of 50", lambda: insight.log(ORG)),
        ("log, a page by cursor", lambda: insight.log(ORG, cursor=first.next_cursor)),
        ("log, action=sms", lambda: insight.log(ORG, action="sms")),
        ("log, a tag on 1 row in 40", lambda: insight.log(ORG, tags={"campaign": "spring-4"})),
        ("log, a tag on no row", lambda: insight.log(ORG, tags={"campaign": "winter"})),
        ("log, a tag on no row, 1 day", lambda: insight.log(ORG, tags={"campaign": "winter"}, since=end - DAY)),
        ("summary, all", lambda: insight.summary(ORG)),
        ("series, days by action", lambda: insight.series(ORG, since=T0, until=end, by="action")),
        ("series, hours by user", lambda: insight.series(ORG, since=T0, until=end, bucket="hour", by="user")),
        ("lifetime", lambda: insight.lifetime(ORG)),
    ]
    try:
        for name, call in calls:
            await call()
            start = time.perf_counter()
            await call()
            print(f"read  {name:<30} {(time.perf_counter() - start) * 1000:9.1f} ms", flush=True)
    finally:
        await led.close()


def measure(url: str, mode: str, fmt: str, until: datetime | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.export", "--child", mode, fmt, url]
    if until is not None:
        cmd += ["--until", until.isoformat()]
    out = subprocess.run(cmd, cwd=str(ROOT), check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def show(r: dict[str, Any]) -> None:
    print(f"{r['mode']:<12} {r['fmt']:<5} {r['rows']:>9,} rows {r['bytes'] / 2**20:8.1f} MiB "
          f"{r['seconds']:6.2f} s {r['rows_per_s']:>9,.0f} rows/s (client CPU {r['cpu_s']:5.2f} s)  "
          f"peak +{r['peak_mb']:7.1f} MiB "
          f"(RSS high-water {r['maxrss_mb']:.1f} MiB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2, help="each side's best rows/s, its highest peak")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "FMT", "URL"), help=argparse.SUPPRESS)
    ap.add_argument("--until", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, fmt, url = a.child
        print(json.dumps(asyncio.run(child(url, mode, fmt, a.until))))
        return

    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    url = start_embedded(root / "pg", delete_on_exit=True)
    migrate(url)
    start = time.perf_counter()
    asyncio.run(seed(url, a.rows))
    print(f"server: PostgreSQL (embedded), {os.cpu_count()} cores; {a.rows:,} usage rows of one organization "
          f"seeded in {time.perf_counter() - start:.1f} s; chunks of {EXPORT_CHUNK_ROWS:,} rows", flush=True)

    # Rounds alternate the sides so that drift (autovacuum, a noisy neighbour on 2 shared cores) hits both alike:
    # each side's best rows/s, and its highest memory peak.
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for r in range(a.rounds):
        print(f"round {r + 1}", flush=True)
        for fmt in ("csv", "jsonl"):
            for mode in ("stream", "materialise"):
                m = measure(url, mode, fmt)
                show(m)
                assert m["rows"] == a.rows, f"{mode} {fmt}: {m['rows']} rows, not {a.rows}"
                best = results.setdefault((mode, fmt), m)
                if m["rows_per_s"] > best["rows_per_s"]:
                    results[(mode, fmt)] = best = {**m, "peak_mb": max(m["peak_mb"], best["peak_mb"]),
                                                   "maxrss_mb": max(m["maxrss_mb"], best["maxrss_mb"])}
                else:
                    best["peak_mb"] = max(m["peak_mb"], best["peak_mb"])
                    best["maxrss_mb"] = max(m["maxrss_mb"], best["maxrss_mb"])
    print("best of the rounds:")
    for m in results.values():
        show(m)
    tenth = measure(url, "stream", "csv", until=T0 + timedelta(seconds=a.rows // 10 + 1))
    tenth["mode"] = "stream 1/10"
    show(tenth)
    assert results[("stream", "csv")]["bytes"] == results[("materialise", "csv")]["bytes"]
    assert results[("stream", "jsonl")]["bytes"] == results[("materialise", "jsonl")]["bytes"]

    def ratio(key: str, fmt: str) -> float:
        return float(results[("stream", fmt)][key] / results[("materialise", fmt)][key])

    asyncio.run(reads(url, a.rows))
    print(f"mem_ratio_csv={ratio('peak_mb', 'csv'):.3f} mem_ratio_jsonl={ratio('peak_mb', 'jsonl'):.3f} "
          f"speed_ratio_csv={ratio('rows_per_s', 'csv'):.2f} speed_ratio_jsonl={ratio('rows_per_s', 'jsonl'):.2f}",
          flush=True)


if __name__ == "__main__":
    main()
