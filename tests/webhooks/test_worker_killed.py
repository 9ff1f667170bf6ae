"""A worker killed mid-delivery loses nothing: a real worker process (worker.py's `main`, with the seam of
tests/webhooks/crash_worker.py) is SIGKILLed right after an endpoint acknowledged an event and before the
endpoint's cursor recorded it; the worker started after it delivers that event again, with the same webhook-id,
and every event after it, in order. At least once: each event is acknowledged, the one in flight twice.

The parts are those of tests/reliability/test_crashes.py (a database of this module's own on the session's
server, localstripe, the SMTP sink, the time-skipping server the worker reaches over gRPC) plus a real receiver
that verifies signatures. The dead worker's delivery is retried once its heartbeat times out (30 s, real time).
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger import Ledger
from ledger.migrate import migrate
from stack.mail import SmtpSink
from stack.stripe_server import start_localstripe
from stack.temporal import start_time_skipping
from temporal_client import DEV_PAYLOAD_KEY
from tests.reliability.test_crashes import WorkerProcess, _drop_database, _own_database
from tests.webhooks.receiver import Receiver
from webhooks.store import WebhookStore

TASK_QUEUE = "billing-webhook-crashes"
DELIVERED_SECONDS = 240.0


class WebhookWorkerProcess(WorkerProcess):
    """The crash worker with the webhook seam: `python -m tests.webhooks.crash_worker`."""

    module = "tests.webhooks.crash_worker"


@dataclass
class Stack:
    database_url: str
    ledger: Ledger
    receiver: Receiver
    worker: WorkerProcess
    spec: Path

    def arm(self, step: str, key: str) -> None:
        draft = self.spec.with_suffix(".draft")
        draft.write_text(f'{{"step": "{step}", "key": "{key}"}}')
        draft.replace(self.spec)


@pytest.fixture(scope="module")
async def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("webhook-crashes")
    name = f"webhook_crashes_{uuid.uuid4().hex[:8]}"
    url = await asyncio.to_thread(_own_database, database_url, name)
    try:
        await asyncio.to_thread(migrate, url)
        async with start_localstripe() as stripe_url, Receiver() as receiver:
            sink = SmtpSink(root / "mail").start()
            env = await start_time_skipping()
            ledger = await Ledger.open(url, pool_size=2)
            spec = root / "crash.json"
            worker_env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "CRASH_"))} | {
                "DATABASE_URL": url,
                "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
                "STRIPE_API_KEY": "sk_test_unused",
                "SMTP_URL": sink.url,
                "BILLING_TASK_QUEUE": TASK_QUEUE,
                "BILLING_DB_POOL_SIZE": "3",
                "BILLING_API_ADDRESS": "127.0.0.1:0",
                "BILLING_PAYLOAD_KEYS": base64.b64encode(DEV_PAYLOAD_KEY).decode(),
                "CRASH_STRIPE_URL": stripe_url,
                "CRASH_SPEC": str(spec),
                "COLUMNS": "200",
            }
            worker = WebhookWorkerProcess(worker_env, root)
            try:
                await worker.start()
                yield Stack(url, ledger, receiver, worker, spec)
            finally:
                await worker.stop()
                await ledger.close()
                await env.shutdown()
                sink.stop()
    finally:
        await asyncio.to_thread(_drop_database, database_url, name)


def _one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> str:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return str(row[0])


def _delivered_seq(url: str, endpoint_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT delivered_seq FROM webhook_endpoints WHERE id = %s", (endpoint_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_worker_killed_after_the_endpoints_2xx_loses_nothing_and_resends_that_event_with_its_id(
    stack: Stack
) -> None:
    s = stack
    org = "acme-hooks"
    store = WebhookStore(s.ledger.pool)  # a platform-wide endpoint: every organization's events
    new = await store.create(url=f"{s.receiver.url}/hooks", events=["credits.low_balance"], now=datetime.now(UTC))
    s.receiver.secrets["hooks"] = new.secret
    keys = [f"alert:{org}:{n}" for n in range(6)]
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        ids = [_one(conn, "SELECT webhook_event_id('credits.low_balance', %s)", k) for k in keys]
        s.arm("webhook", ids[2])  # the third event: acknowledged, then the worker dies
        for n, key in enumerate(keys):
            conn.execute("SELECT webhook_event(%s, 'credits.low_balance', %s, %s::jsonb, now())",
                         (org, key, f'{{"n": {n}}}'))
        last = int(_one(conn, "SELECT max(seq)::text FROM events WHERE org_id = %s", org))

    out = await s.worker.killed()
    assert f"SIGKILL at webhook of {ids[2]}" in out, out[-3000:]
    assert [p["id"] for p in s.receiver.acked("hooks")] == ids[:3]  # acknowledged up to the third
    seqs = [p["seq"] for p in s.receiver.acked("hooks")]
    assert _delivered_seq(s.database_url, new.endpoint.id) == seqs[1]  # the cursor never heard of the third

    await s.worker.start()  # the same command: a new process
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DELIVERED_SECONDS
    while _delivered_seq(s.database_url, new.endpoint.id) < last:
        if loop.time() > deadline:
            raise AssertionError(f"not delivered after {DELIVERED_SECONDS}s:\n{s.worker.output()[-3000:]}")
        await asyncio.sleep(0.5)

    acked = s.receiver.acked("hooks")
    assert [p["id"] for p in acked] == [*ids[:3], *ids[2:]]  # nothing lost, in order; the third twice
    assert acked[2] == acked[3]                                # the same event, the same id and body
    assert all(d.payload is not None for d in s.receiver.deliveries)  # every one signed
