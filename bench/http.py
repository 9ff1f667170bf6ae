"""Debits per second through the HTTP API against the same server's no-op authenticated endpoint, in one run.

Everything is real and local: embedded PostgreSQL (temp dir, deleted on exit, fsync on), migrated; the API
server in a process of its own, as deployed: uvicorn (httptools, uvloop) serving api/app.py's create_app over a
BillingClient on the bench's database (the ledger's pool of BILLING_DB_POOL_SIZE, 10 by default; no Temporal:
no wallet has auto-recharge, so no debit ever signals a workflow). The load comes from other processes:
`--client-procs` processes sharing `--connections` keep-alive connections, each connection one client in a
closed loop (the next request as soon as the answer is read), all with one platform key.

Baseline: GET /v1/whoami, the no-op authenticated endpoint (the key checked from the server's cache, a JSON
answer): what the server answers per second with no engine work. Project: POST /v1/orgs/{org}/debits,
`{"action": "email_validation"}` under a fresh Idempotency-Key, on an organization drawn at random from
`--orgs` enterprise wallets with a large pack (the ledger's fast path: no alert, no guard, no recharge).
Rounds alternate the two (whoami, debit, whoami, debit...) over the same connections, so machine noise hits
both; each side reports its best round, and the CPU each part spent per request (server process, PostgreSQL,
client processes). On the 2-core machine this was written on, all three share the two cores. Debit latency
(p50, p99) is from every debit of every round, closed loop: it includes the wait in the server's queues.
Then every debit answered 201 is checked to be exactly one usage row, with exact sums and no overdraft.

Last line: http_ratio=R p50_ms=A p99_ms=B (R = best debits/s over best whoami/s).

    python -m bench.http [--connections 32] [--client-procs 1] [--orgs 200] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ledger import BIG, check_exact, setup_wallets  # noqa: E402
from ledger.migrate import migrate  # noqa: E402
from stack.postgres import start_embedded  # noqa: E402

ACTION = "email_validation"
WHOAMI, DEBIT = "whoami", "debit"


# -- the server: its own process ------------------------------------------------------------------------


async def _serve(url: str, pool_size: int) -> None:
    """The API as `billing serve` runs it, on a free port; prints `ready <base URL>`, serves until stdin closes."""
    from api.app import create_app
    from api.server import serving
    from ledger import Ledger
    from settings import Settings
    from starter import BillingClient

    settings = Settings(database_url=url, db_pool_size=pool_size)
    ledger = await Ledger.open(url, pool_size=settings.db_pool_size)
    billing = BillingClient(ledger, settings)
    try:
        async with serving(create_app(billing), "127.0.0.1", 0) as base:
            print("ready", base, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    finally:
        await billing.close()


@contextlib.contextmanager
def server_process(url: str, pool_size: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.http", "--serve", url, "--pool-size", str(pool_size)],
                            cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"the API server did not start (exit code {proc.wait()})")
        yield proc, line[1]
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the clients: processes of their own, kept across rounds (their connections stay open) --------------


@dataclass
class Round:
    endpoint: str
    seconds: float
    start_at: float  # time.time() when every client starts
    tag: str         # makes this round's idempotency keys unique


async def _client_loop(base: str, secret: str, orgs: list[str], conns: int, kind: str, pipe: Connection) -> None:
    """Serve rounds from the parent until it sends None: each round, `conns` clients in a closed loop on one
    endpoint; answers (done, errors, latencies in s, 201s)."""
    rng = random.Random()
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"action": ACTION}
    if kind == "httpx":
        import httpx

        hx = httpx.AsyncClient(base_url=base, headers=headers, timeout=30,
                               limits=httpx.Limits(max_connections=conns, max_keepalive_connections=conns))

        async def call(path: str, key: str | None) -> int:
            if key is None:
                return (await hx.get(path)).status_code
            return (await hx.post(path, json=body, headers={"Idempotency-Key": key})).status_code

        close: Any = hx.aclose
    else:
        import aiohttp

        session = aiohttp.ClientSession(base, headers=headers, timeout=aiohttp.ClientTimeout(total=30),
                                        connector=aiohttp.TCPConnector(limit=conns, force_close=False))

        async def call(path: str, key: str | None) -> int:
            if key is None:
                async with session.get(path) as r:
                    await r.read()
                    return r.status
            async with session.post(path, json=body, headers={"Idempotency-Key": key}) as r:
                await r.read()
                return r.status

        close = session.close
    try:
        while (rnd := await asyncio.to_thread(pipe.recv)) is not None:
            assert isinstance(rnd, Round)
            stop = rnd.start_at + rnd.seconds
            latencies: list[float] = []
            errors: list[int] = []

            async def client(i: int, rnd: Round = rnd, stop: float = stop, latencies: list[float] = latencies,
                             errors: list[int] = errors) -> None:
                n = 0
                while time.time() < stop:
                    if rnd.endpoint == WHOAMI:
                        path, key, ok = "/v1/whoami", None, 200
                    else:
                        path, key, ok = f"/v1/orgs/{rng.choice(orgs)}/debits", f"{rnd.tag}-{i}-{n}", 201
                    t = time.perf_counter()
                    status = await call(path, key)
                    if status == ok:
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors.append(status)
                    n += 1

            await asyncio.sleep(max(0.0, rnd.start_at - time.time()))
            await asyncio.gather(*(client(i) for i in range(conns)))
            pipe.send((len(latencies), errors, latencies))
    finally:
        await close()


def _client_main(base: str, secret: str, orgs: list[str], conns: int, kind: str, pipe: Connection) -> None:
    uvloop.run(_client_loop(base, secret, orgs, conns, kind, pipe))


class Clients:
    """`procs` client processes sharing `conns` connections; run() one round on all of them at once."""

    def __init__(self, base: str, secret: str, orgs: list[str], conns: int, procs: int, kind: str) -> None:
        ctx = mp.get_context("spawn")  # nothing of this process (the server's pipes) leaks into them
        per = [conns // procs + (1 if p < conns % procs else 0) for p in range(procs)]
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for p in range(procs):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(base, secret, orgs, per[p], kind, there), daemon=True)
            proc.start()
            self.pipes.append(here)
            self.procs.append(proc)

    def run(self, endpoint: str, seconds: float, tag: str) -> tuple[int, list[int], list[float]]:
        start_at = time.time() + 0.3  # every process has the round before the clock starts
        for p, pipe in enumerate(self.pipes):
            pipe.send(Round(endpoint, seconds, start_at, f"{tag}p{p}"))
        done, errors, latencies = 0, [], []
        for pipe in self.pipes:
            d, e, lat = pipe.recv()
            done += d
            errors += e
            latencies += lat
        return done, errors, latencies

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join(15)


# -- CPU per part ---------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of the server process, PostgreSQL (postmaster and backends) and the client processes."""

    def __init__(self, pgdata: Path, server_pid: int, client_pids: list[int]) -> None:
        self.server = psutil.Process(server_pid)
        self.postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        self.clients = [psutil.Process(pid) for pid in client_pids]

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def snapshot(self) -> dict[str, float]:
        return {"server": self._cpu([self.server]),
                "postgres": self._cpu([self.postmaster, *self.postmaster.children(recursive=True)]),
                "clients": self._cpu(self.clients)}

    @staticmethod
    def per_request(before: dict[str, float], after: dict[str, float], n: int) -> str:
        """CPU microseconds per request of each part."""
        return " ".join(f"{k} {(after[k] - before[k]) * 1e6 / max(n, 1):.0f}" for k in after)


# -- setup and checks -----------------------------------------------------------------------------------


async def platform_key(url: str) -> str:
    from api.keys import ApiKeys
    from ledger.pool import LeanPool

    pool = LeanPool(url, 1)
    await pool.open()
    try:
        return (await ApiKeys(pool).create(role="platform", name="bench", now=datetime.now(UTC))).secret
    finally:
        await pool.close()


async def usage_rows(url: str, orgs: list[str]) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM usage_events WHERE org_id = ANY(%s)", (orgs,))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def p50_p99(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections in all")
    ap.add_argument("--client-procs", type=int, default=1, help="client processes sharing the connections")
    ap.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the clients' HTTP library")
    ap.add_argument("--orgs", type=int, default=200, help="organizations the debits are spread over")
    ap.add_argument("--seconds", type=float, default=8, help="each round of each side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-size", type=int, default=10, help="the server's ledger pool (BILLING_DB_POOL_SIZE)")
    ap.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)  # the server process's entry
    a = ap.parse_args()
    if a.serve:
        uvloop.run(_serve(a.serve, a.pool_size))
        return

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    url = start_embedded(root / "pg", delete_on_exit=True)
    migrate(url)
    orgs = asyncio.run(setup_wallets(url, a.orgs, BIG, auto_recharge=False))
    secret = asyncio.run(platform_key(url))

    with server_process(url, a.pool_size) as (server, base):
        clients = Clients(base, secret, orgs, a.connections, a.client_procs, a.client)
        try:
            cpu = CpuMeter(root / "pg", server.pid, [p.pid for p in clients.procs])
            print(f"server: uvicorn (httptools, uvloop) in 1 process, ledger pool {a.pool_size}; PostgreSQL 18 "
                  f"(embedded), fsync on; clients: {a.client}, {a.client_procs} processes, {a.connections} "
                  f"keep-alive connections; all on the same {os.cpu_count()} cores; orgs={a.orgs} "
                  f"seconds={a.seconds:g} rounds={a.rounds}", flush=True)
            # Warm-up, not counted: connections opened, statements prepared, the key in the server's cache.
            accepted = 0
            for endpoint in (WHOAMI, DEBIT):
                done, errors, _ = clients.run(endpoint, 1.0, "warm")
                assert not errors, f"warm-up {endpoint}: answers {sorted(set(errors))}"
                accepted += done if endpoint == DEBIT else 0

            rates: dict[str, list[float]] = {WHOAMI: [], DEBIT: []}
            cpu_lines: dict[str, list[tuple[float, str]]] = {WHOAMI: [], DEBIT: []}
            debit_latencies: list[float] = []
            whoami_latencies: list[float] = []
            for r in range(a.rounds):
                for endpoint in (WHOAMI, DEBIT):
                    c0 = cpu.snapshot()
                    done, errors, latencies = clients.run(endpoint, a.seconds, f"r{r}")
                    c1 = cpu.snapshot()
                    assert not errors, f"round {r + 1} {endpoint}: {len(errors)} answers {sorted(set(errors))}"
                    rates[endpoint].append(done / a.seconds)
                    cpu_lines[endpoint].append((done / a.seconds, CpuMeter.per_request(c0, c1, done)))
                    if endpoint == DEBIT:
                        accepted += done
                        debit_latencies += latencies
                    else:
                        whoami_latencies += latencies
                print(f"round {r + 1}: whoami={rates[WHOAMI][-1]:.0f}/s debit={rates[DEBIT][-1]:.0f}/s  "
                      f"(cpu us/request: whoami {cpu_lines[WHOAMI][-1][1]}; debit {cpu_lines[DEBIT][-1][1]})",
                      flush=True)
        finally:
            clients.close()

    best_w, best_d = max(rates[WHOAMI]), max(rates[DEBIT])
    (w50, w99), (d50, d99) = p50_p99(whoami_latencies), p50_p99(debit_latencies)
    print(f"baseline GET /v1/whoami          {best_w:8.0f} req/s     p50/p99 {w50:.2f}/{w99:.2f} ms "
          f"(rounds {' '.join(f'{x:.0f}' for x in rates[WHOAMI])})")
    print(f"project  POST /v1/orgs/_/debits  {best_d:8.0f} debits/s  p50/p99 {d50:.2f}/{d99:.2f} ms "
          f"(rounds {' '.join(f'{x:.0f}' for x in rates[DEBIT])})", flush=True)
    rows = asyncio.run(usage_rows(url, orgs))
    assert rows == accepted, f"{accepted} debits answered 201, {rows} usage rows"
    print(f"{accepted} debits answered 201 = {rows} usage rows; exact sums, no overdraft:",
          asyncio.run(check_exact(url, orgs, BIG)), f"({time.perf_counter() - t_start:.0f} s in all)", flush=True)
    print(f"http_ratio={best_d / best_w:.2f} p50_ms={d50:.2f} p99_ms={d99:.2f}")


if __name__ == "__main__":
    main()
