"""Ledger throughput and latency against PostgreSQL's own, measured in one run on one fresh server.

Baselines (pgbench, C): `pgbench -N` (simple-update across 1M accounts: "spread") and a script of one
single-row UPDATE on one account ("hot": the row-lock ceiling of one wallet). Project: the real
`Ledger.debit` path (price book, validation, one PL/pgSQL call) with the same number of clients and
client threads (processes here), on wallets spread over the same count of organizations, then on one
hot wallet. Every wallet has auto-recharge enabled (threshold 1,000 credits, pack 500), as a platform
team running it would: the debit decides the threshold crossing in its own statement, so the common case
(no crossing) stays one round trip on the fast path.

Then latency at a fixed offered load, half the project's best spread debits/s (a busy but unsaturated
server): `pgbench -N --rate` against debits on the spread wallets, same clients and processes, both open
loop on the same schedule (one Poisson arrival stream per pgbench thread / client process; a free client
takes the next arrival). Latency runs from the scheduled time to completion, so a backlog counts; p50 and
p99 from every transaction (pgbench's per-transaction log on its side). Every run then checks zero overdraft
and exact sums, latency-phase debits included.

Tags (issue 13): each round also runs the spread debits with three tags on every debit (TAGS), right before or
after the same debits without (the order alternates by round), on the same wallets: the fast path's cost of
checking, sending and storing them. Both sides report their best round; tags_ratio = tags on / tags off.
Last line: spread_ratio=R1 hot_ratio=R2 p99_ratio=R3 (project p99 / pgbench p99) tags_ratio=R4.

    python -m bench.ledger [--clients 16] [--seconds 10] [--latency-seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Ledger
from ledger.auto_recharge import AutoRecharges
from ledger.migrate import migrate
from models.ledger_types import GrantPack, StartPeriod
from stack.postgres import bin_dir, start_embedded

T0 = datetime.now(UTC)
BIG = Decimal("1000000000")  # enough credits that the spread run never runs dry
# The tags of the tags-on run: three, as a caller tagging by campaign, country and result would send.
TAGS = {"campaign": "spring", "country": "FR", "result": "ok"}


def pgbench_tps(url: str, args: list[str], seconds: int, clients: int, threads: int) -> float:
    host = url.split("host=")[1]
    cmd = [str(bin_dir() / "pgbench"), "-h", host, "-U", "postgres", "-c", str(clients), "-j", str(threads),
           "-T", str(seconds), *args, "postgres"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"tps = ([\d.]+)", out)
    assert m, out
    return float(m.group(1))


def pgbench_latencies(url: str, args: list[str], rate: float, seconds: int, clients: int, threads: int,
                      log_dir: Path) -> tuple[list[float], float]:
    """Per-transaction latencies (ms) of `pgbench --rate`, and its tps.

    From pgbench's log (-l), not its summary: the summary has no percentiles. Under --rate the log line is
    `client xact time script epoch us lag`, and `time` runs from the scheduled start (it includes `lag`),
    which is what the project side measures too.
    """
    log_dir.mkdir()
    tps = pgbench_tps(url, [*args, "--rate", f"{rate:.0f}", "-l", "--log-prefix", str(log_dir / "pgb")],
                      seconds, clients, threads)
    latencies = []
    for log in log_dir.iterdir():  # one file per thread
        for line in log.read_text().splitlines():
            cols = line.split()
            latency_us, lag_us = int(cols[2]), int(cols[6])
            assert latency_us >= lag_us, line  # else `time` no longer counts the schedule lag
            latencies.append(latency_us / 1000)
    assert latencies, f"no pgbench log in {log_dir}"
    return latencies, tps


def p50_p99(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


async def _run_clients(url: str, clients: int, start_at: float,
                       worker: Callable[[Ledger, int], Awaitable[int]]) -> None:
    """One ledger (a pool of `clients` connections) and `clients` workers started together at `start_at`;
    each worker returns how many of its debits triggered auto-recharge, which must be none."""
    ledger = await Ledger.open(url, pool_size=clients)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    triggered = sum(await asyncio.gather(*(worker(ledger, i) for i in range(clients))))
    await ledger.close()
    assert triggered == 0, f"{triggered} debits crossed an auto-recharge threshold far below the balance"


async def _client_proc(url: str, orgs: list[str], clients: int, seconds: float, tags: dict[str, str] | None,
                       start_at: float, tag: str) -> tuple[int, int]:
    done = refused = 0
    stop = start_at + seconds

    async def worker(ledger: Ledger, i: int) -> int:
        nonlocal done, refused
        n = triggered = 0
        org = orgs[i % len(orgs)]
        while time.time() < stop:
            try:
                result = await ledger.debit(org, "email_validation", idempotency_key=f"{tag}-{i}-{n}", tags=tags,
                                            now=T0)
                done += 1
                triggered += result.recharge_triggered
            except Exception:
                refused += 1
            n += 1
        return triggered

    await _run_clients(url, clients, start_at, worker)
    return done, refused


async def _latency_proc(url: str, orgs: list[str], clients: int, rate: float, seconds: float, start_at: float,
                        tag: str) -> tuple[list[float], int]:
    """Open loop at `rate` debits/s, as `pgbench --rate` schedules a thread: one Poisson arrival stream,
    each client on becoming free takes the next arrival time, waits for it and sends. A client still busy
    at that time sends late, and the wait counts: latency (s) runs from the scheduled time to completion."""
    rng = random.Random()
    latencies: list[float] = []
    refused = 0
    arrival = start_at
    stop = start_at + seconds

    async def worker(ledger: Ledger, i: int) -> int:
        nonlocal arrival, refused
        n = triggered = 0
        org = orgs[i % len(orgs)]
        while True:
            arrival += rng.expovariate(rate)
            scheduled = arrival
            if scheduled >= stop:  # pgbench -T likewise schedules nothing past the end
                return triggered
            if (delay := scheduled - time.time()) > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            try:
                result = await ledger.debit(org, "email_validation", idempotency_key=f"{tag}-{i}-{n}", now=T0)
                # uvloop's timers are millisecond-grained and may wake a client up to ~1 ms early: an early
                # send is timed from when it went, not from its later schedule (a late wake-up counts).
                latencies.append(time.time() - min(scheduled, sent))
                triggered += result.recharge_triggered
            except Exception:
                refused += 1
            n += 1

    await _run_clients(url, clients, start_at, worker)
    return latencies, refused


def _proc_main(args: tuple[str, list[str], int, float, dict[str, str] | None, float, str],
               q: mp.Queue) -> None:  # type: ignore[type-arg]
    q.put(uvloop.run(_client_proc(*args)))  # as worker.py and the CLI run


def _latency_main(args: tuple[str, list[str], int, float, float, float, str],
                  q: mp.Queue) -> None:  # type: ignore[type-arg]
    q.put(uvloop.run(_latency_proc(*args)))


def _run_procs(target: Callable[..., None], url: str, orgs: list[str], clients: int, procs: int,
               extra: Callable[[int], tuple[Any, ...]], tag: str) -> list[Any]:
    """Start `procs` processes running `target` over `clients` clients in all; each process gets its share
    of the clients and their wallets (or all share the one hot wallet), and `extra(its client count)` as
    further arguments. Returns what each one put on the queue."""
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start_at = time.time() + 1.5  # every process connected before the clock starts
    per = [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]
    ps = []
    offset = 0
    for p in range(procs):
        mine = orgs[offset:offset + per[p]] if len(orgs) > 1 else orgs
        offset += per[p]
        args = (url, mine, per[p], *extra(per[p]), start_at, f"{tag}{p}")
        proc = mp.Process(target=target, args=(args, q))
        proc.start()
        ps.append(proc)
    results = [q.get() for _ in ps]
    for proc in ps:
        proc.join()
    return results


def project_dps(url: str, orgs: list[str], clients: int, procs: int, seconds: float, tag: str,
                tags: dict[str, str] | None = None) -> tuple[float, int]:
    results = _run_procs(_proc_main, url, orgs, clients, procs, lambda n: (seconds, tags), tag)
    done = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    return done / seconds, refused


def project_latencies(url: str, orgs: list[str], rate: float, clients: int, procs: int, seconds: float,
                      tag: str) -> tuple[list[float], float, int]:
    """Per-debit latencies (ms) at `rate` debits/s in all, the rate done, and the refused count."""
    # Each process gets its clients' share of the rate, as pgbench gives each thread rate / threads.
    results = _run_procs(_latency_main, url, orgs, clients, procs, lambda n: (rate * n / clients, seconds), tag)
    latencies = [s * 1000 for r in results for s in r[0]]
    return latencies, len(latencies) / seconds, sum(r[1] for r in results)


async def setup_wallets(url: str, n: int, credits: Decimal, auto_recharge: bool) -> list[str]:
    ledger = await Ledger.open(url, pool_size=4)
    recharges = AutoRecharges(ledger)
    orgs = [f"bench-{n}-{i}" for i in range(n)]
    for org in orgs:
        await ledger.start_period(StartPeriod(org, f"{org}:start", "enterprise", T0, T0 + timedelta(days=31), T0))
        await ledger.grant_pack(GrantPack(org, f"{org}:pack", credits, T0))
        if auto_recharge:
            await recharges.set(org, threshold=Decimal(1000), pack="500", now=T0)
    await ledger.close()
    return orgs


async def check_exact(url: str, orgs: list[str], credits: Decimal) -> str:
    """Zero overdraft and exact sums: granted - debited = stored balance, for every wallet."""
    import psycopg

    from tests.support.invariants import violations

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        broken = await violations(conn)
        assert not broken, broken
        cur = await conn.execute(
            "SELECT w.org_id, w.allocation, w.plan_remaining + w.topup_remaining, "
            "(SELECT coalesce(sum(cost), 0) FROM usage_events u WHERE u.org_id = w.org_id) "
            "FROM wallets w WHERE w.org_id = ANY(%s)", (orgs,))
        for org, allocation, bal, spent in await cur.fetchall():
            granted = allocation + int(credits * 1000)
            assert bal >= 0 and bal + spent == granted, (org, bal, spent)
    return "ok"


async def check_tags_stored(url: str) -> str:
    """Every debit of the tags-on runs (keys 't{round}-...') stored TAGS, and no other debit any tags."""
    import psycopg
    from psycopg.types.json import Jsonb

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE idem_key LIKE 't%%'), "
            "count(*) FILTER (WHERE idem_key LIKE 't%%' AND tags = %s), "
            "count(*) FILTER (WHERE idem_key NOT LIKE 't%%' AND tags IS NOT NULL) FROM usage_events",
            (Jsonb(TAGS),))
        row = await cur.fetchone()
    assert row is not None
    tagged, right, stray = row
    assert tagged > 0 and right == tagged and stray == 0, (tagged, right, stray)
    return f"ok ({tagged:,} tagged debits)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="pgbench -j, and the project's client processes")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-seconds", type=int, default=8, help="each side of the latency phase")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (100k accounts each)")
    ap.add_argument("--no-auto-recharge", action="store_true", help="debit wallets without auto-recharge")
    a = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    url = start_embedded(root / "pg", delete_on_exit=True)
    migrate(url)
    host = url.split("host=")[1]
    subprocess.run([str(bin_dir() / "pgbench"), "-i", "-q", "-s", str(a.scale), "-h", host, "-U", "postgres",
                    "postgres"], check=True, capture_output=True)
    hot_sql = root / "hot.sql"
    hot_sql.write_text("UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid = 1;\n")

    spread_orgs = asyncio.run(setup_wallets(url, a.clients, BIG, not a.no_auto_recharge))
    hot_orgs = asyncio.run(setup_wallets(url, 1, BIG, not a.no_auto_recharge))
    print(f"server: PostgreSQL 18 (embedded), fsync on, {os.cpu_count()} cores; clients={a.clients} "
          f"threads={a.threads} seconds={a.seconds} rounds={a.rounds} "
          f"auto-recharge={'off' if a.no_auto_recharge else 'on'}", flush=True)

    # Rounds alternate baseline and project so drift (checkpoints, autovacuum, a noisy neighbour) hits
    # both alike; each side reports its best round.
    rows: dict[str, list[float]] = {"spread_base": [], "spread_proj": [], "spread_tags": [], "hot_base": [],
                                    "hot_proj": []}
    for r in range(a.rounds):
        rows["spread_base"].append(pgbench_tps(url, ["-N"], a.seconds, a.clients, a.threads))
        # Tags off and on back to back, the first of the two alternating: neither always runs on a fuller table.
        for tags in (None, TAGS) if r % 2 == 0 else (TAGS, None):
            key = "spread_proj" if tags is None else "spread_tags"
            rows[key].append(project_dps(url, spread_orgs, a.clients, a.threads, a.seconds,
                                         f"{'s' if tags is None else 't'}{r}-", tags)[0])
        rows["hot_base"].append(pgbench_tps(url, ["-n", "-f", str(hot_sql)], a.seconds, a.clients, a.threads))
        rows["hot_proj"].append(project_dps(url, hot_orgs, a.clients, a.threads, a.seconds, f"h{r}-")[0])
        print(f"round {r + 1}: " + "  ".join(f"{k}={v[-1]:.0f}" for k, v in rows.items()), flush=True)
    base_spread, proj_spread = max(rows["spread_base"]), max(rows["spread_proj"])
    base_hot, proj_hot = max(rows["hot_base"]), max(rows["hot_proj"])
    proj_tags = max(rows["spread_tags"])
    print(f"baseline pgbench -N               {base_spread:10.0f} tps")
    print(f"project  debit, wallet per client {proj_spread:10.0f} debits/s")
    print(f"project  same, 3 tags per debit   {proj_tags:10.0f} debits/s  "
          f"(tags on/off {proj_tags / proj_spread:.2f}; rounds on/off: "
          + ", ".join(f"{on / off:.2f}" for on, off in zip(rows["spread_tags"], rows["spread_proj"], strict=True))
          + ")")
    print(f"baseline single-row UPDATE (hot)  {base_hot:10.0f} tps")
    print(f"project  debit, one hot wallet    {proj_hot:10.0f} debits/s", flush=True)

    # Latency where a service runs, below saturation: both sides at one offered rate, half the project's
    # best spread rate (a load it sustains with headroom), on the spread wallets and accounts.
    rate = proj_spread / 2
    base_lat, base_done = pgbench_latencies(url, ["-N"], rate, a.latency_seconds, a.clients, a.threads,
                                            root / "pgbench-log")
    proj_lat, proj_done, refused = project_latencies(url, spread_orgs, rate, a.clients, a.threads,
                                                     a.latency_seconds, "lat")
    assert proj_lat, "no debit completed in the latency phase"
    (base_p50, base_p99), (proj_p50, proj_p99) = p50_p99(base_lat), p50_p99(proj_lat)
    print(f"latency phase: offered {rate:.0f}/s for {a.latency_seconds} s; done: pgbench {base_done:.0f} tps, "
          f"project {proj_done:.0f} debits/s ({refused} refused)")
    print(f"latency p50/p99 ms at {rate:6.0f}/s  baseline {base_p50:.2f}/{base_p99:.2f}  "
          f"project {proj_p50:.2f}/{proj_p99:.2f}  p99 ratio {proj_p99 / base_p99:.2f}", flush=True)

    print("exact sums, no overdraft:", asyncio.run(check_exact(url, spread_orgs + hot_orgs, BIG)), flush=True)
    print("tags stored:", asyncio.run(check_tags_stored(url)), flush=True)
    print(f"spread_ratio={proj_spread / base_spread:.2f} hot_ratio={proj_hot / base_hot:.2f} "
          f"p99_ratio={proj_p99 / base_p99:.2f} tags_ratio={proj_tags / proj_spread:.2f}")


if __name__ == "__main__":
    main()
