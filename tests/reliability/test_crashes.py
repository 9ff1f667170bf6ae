"""Crashes (issue 10, the reliability suite): a real worker process SIGKILLed at the ledger, Stripe and
email steps of a renewal, then restarted: exactly one PaymentIntent at Stripe, one succeeded payment,
one invoice, one grant and one receipt.

The worker is `python -m tests.reliability.crash_worker`: worker.py's own `main`, configured by the
environment as in production (DATABASE_URL, TEMPORAL_ADDRESS, STRIPE_API_KEY, SMTP_URL,
BILLING_TASK_QUEUE), with a seam that SIGKILLs it right after one effect of one business key and before
anything records that effect (crash_worker.py). The parts are real processes or servers started here:
PostgreSQL (a database of this module's own on the session's server), localstripe, the SMTP sink and
Temporal's time-skipping test server.

Why the time-skipping server: it is a Temporal server process like any other (the worker subprocess
reaches it over gRPC at its address and knows nothing of skipped time), and it is the one way to make a
monthly renewal fall due in seconds; the dev server would need a real month, or a period shortened by a
seam in the workflow itself. It skips no time while a task is outstanding, so the dead worker's tasks time
out in real time, as on a real server: a workflow task after 10 s, the charge after its 60 s start-to-close
timeout. It has no sticky schedule-to-start timeout, hence the crash worker's one tuning (crash_worker.py);
and a query holds its clock until a worker answers it, hence the wait for the renewal reads the database,
and the workflow is queried once the new worker has taken over.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from audit import run_audit
from ledger import Ledger
from ledger.migrate import migrate
from models.keys import period_key, step_key, subscription_workflow_id
from models.subscription_types import Subscription
from payments import close_stripe_client
from payments.stripe_client import metadata_value, stripe_client
from settings import ROOT, Settings
from stack.mail import ReceivedEmail, SmtpSink
from stack.stripe_server import CARD_OK, start_localstripe
from stack.temporal import start_time_skipping
from starter import BillingClient
from temporal_client import DEV_PAYLOAD_KEY
from testkit.payments import KitPayments
from workflows.subscription import SubscriptionWorkflow

TASK_QUEUE = "billing-crashes"
READY = "Ctrl-C stops the worker"  # worker.main prints it once the worker polls its task queue
# Generous: a loaded 2-core machine starts a Python worker in seconds, not in tenths.
WORKER_START_SECONDS = 120.0
SETTLE_SECONDS = 180.0
QUERY_TIMEOUT = timedelta(seconds=15)


class WorkerProcess:
    """The crash worker as a subprocess, its output in a log file per start (read when a check fails)."""

    module = "tests.reliability.crash_worker"  # `python -m` this

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.starts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.log: Path = logs / "worker-0.log"
        self._out: IO[bytes] | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def start(self) -> None:
        self.starts += 1
        self.log = self.logs / f"worker-{self.starts}.log"
        self._out = self.log.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, cwd=ROOT, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=self._out, stderr=asyncio.subprocess.STDOUT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_START_SECONDS
        while READY not in self.output():
            if self.proc.returncode is not None:
                raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if loop.time() > deadline:
                raise AssertionError(f"the worker did not start in {WORKER_START_SECONDS}s:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.1)

    async def killed(self, within: float = 120.0) -> str:
        """Wait for the worker to SIGKILL itself at its seam; its output."""
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise AssertionError(f"the worker never reached its crash point:\n{self.output()[-3000:]}") from None
        self._close_log()
        assert code == -signal.SIGKILL, f"exit code {code}:\n{self.output()[-3000:]}"
        return self.output()

    async def stop(self) -> None:
        """A graceful stop (SIGTERM, as worker.main handles it), killed if it does not end in time."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


@dataclass
class CrashStack:
    env: WorkflowEnvironment
    billing: BillingClient
    payments: KitPayments     # the test's own view of Stripe (cards, PaymentIntents); not the worker's
    sink: SmtpSink
    database_url: str
    spec: Path                # the crash worker's seam (crash_worker.py)
    worker: WorkerProcess

    def arm(self, step: str, key: str) -> None:
        """Arm the worker's seam (crash_worker.py): written whole, then renamed, since the worker may read it
        at any moment (the alert sender's loop sends emails too)."""
        draft = self.spec.with_suffix(".draft")
        draft.write_text(json.dumps({"step": step, "key": key}))
        draft.replace(self.spec)

    async def now(self) -> datetime:
        return await self.env.get_current_time()


def _own_database(url: str, name: str) -> str:
    """The URL of database `name` on the server of `url` (created here, dropped by the caller)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def _drop_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
async def crash_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CrashStack]:
    root = tmp_path_factory.mktemp("crashes")
    # A database of this module's own: the audit reads all of it, and every organization in it has its
    # subscription on this module's Temporal server.
    name = f"crashes_{uuid.uuid4().hex[:8]}"
    url = await asyncio.to_thread(_own_database, database_url, name)
    try:
        await asyncio.to_thread(migrate, url)
        async with start_localstripe() as stripe_url:
            sink = SmtpSink(root / "mail").start()
            env = await start_time_skipping()
            ledger = await Ledger.open(url, pool_size=2)
            stripe = stripe_client(base_url=stripe_url)
            payments = KitPayments(url, stripe)
            spec = root / "crash.json"
            worker_env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "CRASH_"))} | {
                "DATABASE_URL": url,
                "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
                "STRIPE_API_KEY": "sk_test_unused",  # configured, as in production; the seam points it at localstripe
                "SMTP_URL": sink.url,
                "BILLING_TASK_QUEUE": TASK_QUEUE,
                "BILLING_DB_POOL_SIZE": "3",
                # The key the test's client seals billing contacts with (stack/temporal.py's converter).
                "BILLING_PAYLOAD_KEYS": base64.b64encode(DEV_PAYLOAD_KEY).decode(),
                "CRASH_STRIPE_URL": stripe_url,
                "CRASH_SPEC": str(spec),
                "COLUMNS": "200",
            }
            worker = WorkerProcess(worker_env, root)
            settings = Settings(database_url=url, task_queue=TASK_QUEUE, smtp_url=sink.url, data_dir=root)
            billing = BillingClient(ledger, settings, env.client, payments=payments)
            try:
                await worker.start()
                yield CrashStack(env, billing, payments, sink, url, spec, worker)
            finally:
                await worker.stop()
                await payments.close()
                await close_stripe_client(stripe)
                await ledger.close()
                await env.shutdown()
                sink.stop()
    finally:
        await asyncio.to_thread(_drop_database, database_url, name)


@dataclass(frozen=True)
class Books:
    """What one renewal left behind, everywhere it leaves something."""

    payment: str | None           # the renewal payment row's status
    invoices: int                 # invoices of the renewal payment
    grants: int                   # grant entries of the renewal's credits
    outbox_sent: bool | None      # the receipt's outbox row: stamped sent (None: no row)
    intents: list[str]            # PaymentIntents at localstripe carrying the renewal's key
    receipts: list[ReceivedEmail] # copies of the renewal receipt the SMTP sink received


async def _books(s: CrashStack, org: str, charge_key: str, grant_key: str, receipt_key: str) -> Books:
    async with await psycopg.AsyncConnection.connect(s.database_url, autocommit=True) as conn:
        payment = await (await conn.execute("SELECT status FROM payments WHERE key = %s", (charge_key,))).fetchone()
        invoices = await (await conn.execute(
            "SELECT count(*) FROM invoices WHERE payment_key = %s", (charge_key,))).fetchone()
        grants = await (await conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE org_id = %s AND kind = 'grant' AND ref = %s",
            (org, grant_key))).fetchone()
        outbox = await (await conn.execute(
            "SELECT sent_at IS NOT NULL FROM outbox WHERE key = %s", (receipt_key,))).fetchone()
    assert invoices is not None and grants is not None
    return Books(
        payment[0] if payment else None, int(invoices[0]), int(grants[0]), outbox[0] if outbox else None,
        await _intents(s, org, charge_key), [m for m in s.sink.messages(org) if m.key == receipt_key])


async def _intents(s: CrashStack, org: str, key: str) -> list[str]:
    """The ids of the PaymentIntents Stripe holds for `key` (metadata.billing_key), of any status."""
    ids = await s.payments.stripe_payment_intents(org)
    intents = [await s.payments.stripe.v1.payment_intents.retrieve_async(pi) for pi in ids]
    return [pi.id for pi in intents if metadata_value(pi, "billing_key") == key]


async def _renewed(s: CrashStack, org: str, charge_key: str, grant_key: str, receipt_key: str) -> None:
    """Wait, reading the database only, until the renewal's every effect is recorded (a query would hold
    the time-skipping server's clock until a worker answers it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    while True:
        books = await _books(s, org, charge_key, grant_key, receipt_key)
        if (books.payment, books.invoices, books.grants, books.outbox_sent) == ("succeeded", 1, 1, True):
            return
        if loop.time() > deadline:
            raise AssertionError(f"{org}: not renewed after {SETTLE_SECONDS}s ({books}):\n{s.worker.output()[-3000:]}")
        await asyncio.sleep(0.5)


async def _settled(s: CrashStack, org: str) -> Subscription:
    """Wait until the subscription has nothing running or due (the worker answers its queries)."""
    handle = s.env.client.get_workflow_handle(subscription_workflow_id(org))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    last: BaseException | None = None
    while True:
        try:
            # A query waits for a workflow task in flight, and one a dead worker took until the server
            # times it out: asked again until the deadline.
            if await handle.query(SubscriptionWorkflow.settled, await s.now(), rpc_timeout=QUERY_TIMEOUT):
                state: Subscription = await handle.query(SubscriptionWorkflow.state, rpc_timeout=QUERY_TIMEOUT)
                return state
        except RPCError as err:
            last = err
        if loop.time() > deadline:
            raise AssertionError(f"{org}: still busy after {SETTLE_SECONDS}s ({last!r}):\n{s.worker.output()[-3000:]}")
        await asyncio.sleep(0.2)


async def _audit(s: CrashStack) -> None:
    """The audit (audit.py) of this module's whole database: every renewal is complete, nothing in flight."""
    report = await run_audit(s.database_url, temporal=s.env.client, now=await s.now(), pending_bound=timedelta(0))
    assert not report.skipped, report.skipped
    assert report.ok and not report.incidents, report.findings


# What the kill leaves behind at each step: the renewal payment's status, its invoices and its grants (None:
# either, since the grant and the receipt run side by side after the charge).
STEPS: dict[str, tuple[str, int, int | None]] = {
    # The charge went through and its invoice is written; the grant committed, its answer lost.
    "ledger": ("succeeded", 1, 1),
    # Stripe moved the money; nothing of it is recorded yet: the row is still pending.
    "stripe": ("pending", 0, 0),
    # Paid and invoiced; the receipt rendered into the outbox, never sent.
    "smtp-before": ("succeeded", 1, None),
    # Paid and invoiced; the SMTP server accepted the receipt, the outbox never heard.
    "smtp-after": ("succeeded", 1, None),
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_a_worker_killed_at_a_renewal_step_and_restarted_renews_exactly_once(
    crash_stack: CrashStack, org: str, step: str
) -> None:
    s = crash_stack
    card = await s.payments.create_card(CARD_OK)
    sub = await s.billing.subscribe(org, plan="pro", seats=2, email="ops@acme.test", payment_method=card)
    assert sub.period_end is not None and sub.renewals == 0
    # The renewal's keys, as the workflow builds them (models/keys.py): the new period starts at the old end.
    charge_key = period_key(org, sub.period_end, "renewal")
    grant_key = period_key(org, sub.period_end, "credits")
    receipt_key = step_key(charge_key, "receipt")
    s.arm(step, {"ledger": grant_key, "stripe": charge_key}.get(step, receipt_key))

    await s.env.sleep(sub.period_end - await s.now())  # the renewal falls due; the worker dies in it
    out = await s.worker.killed()
    assert f"SIGKILL at {step} of " in out, out[-3000:]

    # Where the kill landed: right after the step's effect, before anything recorded it.
    died = await _books(s, org, charge_key, grant_key, receipt_key)
    payment, invoices, grants = STEPS[step]
    assert len(died.intents) == 1  # Stripe charged once in every case
    assert (died.payment, died.invoices) == (payment, invoices), died
    if grants is not None:
        assert died.grants == grants, died
    if step.startswith("smtp"):
        assert died.outbox_sent is False, died
        assert len(died.receipts) == (1 if step == "smtp-after" else 0), died

    await s.worker.start()  # the same command: a new process, nothing carried over but the seam spent
    # The server times out the dead worker's tasks (a workflow task after 10 s, the charge after its 60 s
    # start-to-close timeout: nothing heartbeats it), then the new worker takes them over.
    await _renewed(s, org, charge_key, grant_key, receipt_key)
    state = await _settled(s, org)

    assert (state.status, state.renewals, state.incident) == ("active", 1, None), state
    books = await _books(s, org, charge_key, grant_key, receipt_key)
    assert len(books.intents) == 1, books                  # one PaymentIntent for the renewal
    assert books.intents == died.intents, books
    assert (books.payment, books.invoices, books.grants, books.outbox_sent) == ("succeeded", 1, 1, True), books
    # One receipt: one Message-ID. A kill between the SMTP server's "250" and the outbox's stamp is the
    # one window the mailer cannot close (mail/mailer.py): that receipt arrives twice, byte for byte the
    # same message with the same Message-ID, which receivers deduplicate.
    assert len({m.message_id for m in books.receipts}) == 1, books.receipts
    assert len(books.receipts) == (2 if step == "smtp-after" else 1), books.receipts
    assert len({m.path.read_bytes() for m in books.receipts}) == 1
    # The organization's whole record: two periods paid, each with one PaymentIntent, invoice and receipt.
    async with await psycopg.AsyncConnection.connect(s.database_url, autocommit=True) as conn:
        statuses = await (await conn.execute("SELECT status FROM payments WHERE org_id = %s", (org,))).fetchall()
    assert statuses == [("succeeded",), ("succeeded",)]
    assert len(await s.payments.stripe_payment_intents(org)) == 2
    assert len(await s.billing.invoices(org)) == 2
    assert len({m.message_id for m in s.sink.messages(org) if m.template == "receipt"}) == 2
    await _audit(s)
