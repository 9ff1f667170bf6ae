"""`BillingClient`, the async facade platform teams import (the CLI over it is cli.py).

    from starter import BillingClient
    billing = await BillingClient.connect()          # reads the environment (see settings.py)
    await billing.debit("acme", action="ai_chat", tier="smart", idempotency_key="msg-42")

It imports nothing of the embedded development stack (stack/) and never migrates the database
(`billing migrate` does): a production caller needs neither DDL rights nor the extras.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ledger import Ledger, runway
from ledger.auto_recharge import AutoRecharges
from ledger.insight import UsageInsight
from ledger.quotas import Quotas
from models.auto_recharge_types import (
    DEFAULT_SPENDING_LIMIT_CENTS,
    AutoRechargeSettings,
    BuyPack,
    PackPurchase,
    RechargeRun,
    RechargeTrigger,
)
from models.billing_types import EnsureCustomer, Interval, Invoice
from models.catalog import CATALOG, CATALOGS
from models.checks import check_id, check_name, shown, utcnow
from models.contract_types import ContractTerms, check_contract
from models.errors import BillingError, IdempotencyConflict, InvalidRequest, ServiceUnavailable, from_failure
from models.insight_types import (
    DEFAULT_LOG_LIMIT,
    ActionSummary,
    ExportFormat,
    LifetimeTotals,
    MemberUsage,
    SeriesBucket,
    SeriesBy,
    SeriesPoint,
    UsagePage,
)
from models.keys import open_wallet_key, pack_key, pack_workflow_id, recharge_workflow_id, subscription_workflow_id
from models.ledger_types import (
    Balance,
    DebitResult,
    HoldResult,
    LedgerWriteResult,
    StartPeriod,
    Transaction,
    UsageGrouping,
    UsageRow,
)
from models.projection import Projection
from models.quota_types import QuotaResult, QuotaUsage
from models.subscription_rules import check_seat_count, check_subscribe
from models.subscription_types import (
    ContractRequest,
    MigrateRequest,
    PlanRequest,
    SeatsRequest,
    SubscribeRequest,
    Subscription,
    SubscriptionState,
)
from payments import Payments, close_stripe_client, stripe_client_from_settings
from settings import DEV_STRIPE_URL, Settings
from temporal_client import connect_client
from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.common import ORG_ID
from workflows.pack_purchase import PackPurchaseWorkflow
from workflows.subscription import SubscriptionWorkflow

log = logging.getLogger("billing.client")

# Every call that waits on Temporal answers within this (failure model rule 5): longer than an update's own
# deadline (workflows/subscription.py UPDATE_DEADLINE), so an update that gives up is answered by itself.
CLIENT_DEADLINE = timedelta(seconds=150)
CONNECT_DEADLINE = timedelta(seconds=10)
TRIGGER_DEADLINE = timedelta(seconds=5)   # a debit never waits longer on its auto-recharge signal
_UNREACHABLE = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED)


@asynccontextmanager
async def _answered_within(deadline: timedelta, what: str) -> AsyncIterator[None]:
    """Turn a wait past `deadline`, or a Temporal server that cannot be reached, into ServiceUnavailable.
    Calls pass the deadline to the SDK as well (rpc_timeout), which then ends them itself; the timeout
    here, a little later, bounds what the SDK does not (following a workflow's result)."""
    try:
        async with asyncio.timeout(deadline.total_seconds() + 1):
            yield
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):  # the SDK's form of an update's timeout
        raise ServiceUnavailable(f"{what}: no answer within {deadline}; it may still complete, and asking "
                                 "again is safe (a repeat answers as the first)") from None
    except RPCError as err:
        if err.status in _UNREACHABLE:
            raise ServiceUnavailable(f"{what}: Temporal cannot be reached ({err.message})") from None
        raise


def _billing_error(err: BaseException) -> BaseException:
    """The typed error behind a Temporal failure (models/errors.py), else the failure itself."""
    return from_failure(err) or err


class BillingClient:
    """Start and steer subscriptions (Temporal workflows), meter usage and read balances (the ledger)."""

    def __init__(self, ledger: Ledger, settings: Settings, temporal: Client | None = None, *,
                 payments: Payments | None = None) -> None:
        self.ledger = ledger
        self.settings = settings
        self._temporal = temporal
        self.deadline = CLIENT_DEADLINE  # of every call that waits on Temporal
        self.auto_recharges = AutoRecharges(ledger)
        self.insight = UsageInsight(ledger)   # the usage reads (logs, summaries, series, exports, projection)
        self.quota_counts = Quotas(ledger)    # the plans' non-credit quotas (`quotas()` reads them)
        # Stripe from STRIPE_API_KEY, or in development mode the embedded stack's fake; else none (metering
        # and reads need none; buying with a new card is refused as ServiceUnavailable).
        self._own_stripe = None
        if payments is None and (settings.stripe_api_key or settings.dev_mode):
            self._own_stripe = stripe_client_from_settings(settings, DEV_STRIPE_URL)
        self.payments = payments or Payments(ledger.pool, self._own_stripe)

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> BillingClient:
        """Connect with `settings` (default: from the environment). Never migrates: `billing migrate`
        (or the main command) has brought the schema up to date."""
        settings = settings or Settings.from_env()
        if not settings.database_url:
            raise ServiceUnavailable("DATABASE_URL is not set: the client needs the ledger's database "
                                 "(the CLI and the test kit start the embedded one for development)")
        ledger = await Ledger.open(settings.database_url, pool_size=settings.db_pool_size, clock=clock,
                                   hold_ttl=timedelta(seconds=settings.hold_ttl_seconds))
        return cls(ledger, settings)

    async def close(self) -> None:
        if self._own_stripe is not None:
            await close_stripe_client(self._own_stripe)
        await self.ledger.close()

    async def __aenter__(self) -> BillingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- subscriptions (one workflow per organization: subscription:{org_id}) ------------------------

    async def temporal(self) -> Client:
        """The Temporal client, connected on first use (metering alone never needs it)."""
        if self._temporal is None:
            try:
                async with _answered_within(CONNECT_DEADLINE, "connecting to Temporal"):
                    self._temporal = await connect_client(self.settings)
            except RuntimeError as err:  # the SDK's "failed client connect"
                raise ServiceUnavailable(f"Temporal cannot be reached: {err}") from None
        return self._temporal

    async def subscribe(
        self, org_id: str, *, plan: str, seats: int = 1, interval: Interval = "month", trial_days: int = 0,
        email: str, payment_method: str | None = None, vat_rate: Decimal = Decimal(0),
    ) -> Subscription:
        """Start the organization's subscription: charged now (or after `trial_days` of trial), renewing on
        its own. Raises PaymentDeclined when the first charge fails (the organization stays on Free)."""
        check_id("org_id", org_id)
        check_name("plan", plan)
        catalog = CATALOGS.current  # a new subscription is priced on the current version, and keeps it
        check_subscribe(catalog, None, plan, seats, interval, trial_days, email, vat_rate)  # before any start
        if payment_method is not None:  # an id, before it reaches a workflow and Stripe
            check_id("payment_method", payment_method)
            if self.payments.has_stripe:  # one Stripe read: an unknown card starts nothing
                await self.payments.check_payment_method_known(org_id, payment_method)
        client = await self.temporal()
        start = WithStartWorkflowOperation(
            SubscriptionWorkflow.run, SubscriptionState(org_id), id=subscription_workflow_id(org_id),
            task_queue=self.settings.task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, org_id)]),
            static_summary=f"Subscription of organization {org_id}",
        )
        req = SubscribeRequest(plan, seats, email, interval, trial_days, payment_method, vat_rate, catalog.version)
        try:
            async with _answered_within(self.deadline, f"subscribing {org_id}"):
                result: Subscription = await client.execute_update_with_start_workflow(
                    SubscriptionWorkflow.subscribe, req, start_workflow_operation=start, rpc_timeout=self.deadline)
            return result
        except WorkflowUpdateFailedError as err:
            raise _billing_error(err) from None

    async def upgrade(self, org_id: str, *, plan: str) -> Subscription:
        """Move to a higher plan now, charging the price difference for the rest of the period."""
        return await self._update(org_id, SubscriptionWorkflow.upgrade,
                                  PlanRequest(check_name("plan", plan), CATALOGS.current.version))

    async def downgrade(self, org_id: str, *, plan: str) -> Subscription:
        """Move to a lower plan at period end (no refund). Downgrading to the current plan withdraws a
        pending downgrade; a second downgrade replaces the first."""
        return await self._update(org_id, SubscriptionWorkflow.downgrade,
                                  PlanRequest(check_name("plan", plan), CATALOGS.current.version))

    async def change_seats(self, org_id: str, *, seats: int) -> Subscription:
        """More seats now (prorated charge); fewer seats from the next period."""
        check_seat_count(seats)  # here: a payload that cannot reach the workflow would fail untyped
        return await self._update(org_id, SubscriptionWorkflow.change_seats, SeatsRequest(seats))

    async def cancel(self, org_id: str) -> Subscription:
        """Cancel to Free at period end; service continues until then, no refund."""
        return await self._update(org_id, SubscriptionWorkflow.cancel, None)

    async def resume(self, org_id: str) -> Subscription:
        """Undo a cancellation before the period ends."""
        return await self._update(org_id, SubscriptionWorkflow.resume, None)

    async def retry_now(self, org_id: str) -> Subscription:
        """Run the subscription's failed step again now instead of at its next backoff, and answer once it
        went through or failed again (`.incident` says what failed). At once when no incident is open."""
        return await self._update(org_id, SubscriptionWorkflow.retry_now, None)

    async def set_contract(self, org_id: str, terms: ContractTerms | None) -> Subscription:
        """Set the organization's contract terms over its plan (models/contract_types.py), or end them with None:
        overage, the open-hold limit and this period's allocation at once, seat prices from the next charge.
        The same terms again change nothing."""
        if terms is not None:
            check_contract(terms)  # here too: refused before any workflow is reached
        return await self._update(org_id, SubscriptionWorkflow.set_contract, ContractRequest(terms))

    async def contract(self, org_id: str) -> ContractTerms | None:
        """The organization's contract terms (None: its plan's own apply)."""
        return (await self.subscription(org_id)).contract

    async def migrate_catalog(self, org_id: str, *, version: int | None = None) -> Subscription:
        """Move a grandfathered subscription to catalog `version` (the current one by default): its next charge
        is priced on it. Refused while a contract locks its prices."""
        target = CATALOGS.get(CATALOGS.current.version if version is None else version)
        return await self._update(org_id, SubscriptionWorkflow.migrate_catalog, MigrateRequest(target.version))

    async def subscription(self, org_id: str) -> Subscription:
        handle = await self._handle(org_id)
        try:
            async with _answered_within(self.deadline, f"reading the subscription of {org_id}"):
                result: Subscription = await handle.query(SubscriptionWorkflow.state, rpc_timeout=self.deadline)
            return result
        except RPCError as err:
            raise self._not_found(org_id, err) from None
        except WorkflowQueryFailedError as err:
            raise InvalidRequest(f"{org_id}: the subscription cannot be read: {err}") from None

    async def invoices(self, org_id: str) -> list[Invoice]:
        """The organization's invoices, oldest first (number INV-YYYY-NNNNNN, lines, tax, total, html)."""
        check_id("org_id", org_id)
        return await self.payments.invoices(org_id)

    async def mark_invoice_paid(self, org_id: str, number: str, *, reference: str | None = None) -> Invoice:
        """Record the payment of open invoice `number` (invoice payment terms: a bank transfer arrived): the invoice
        is paid and its payment succeeded at once, then the subscription is told, so it stops following the
        invoice (no more reminders) and sends the receipt. A repeat answers as the first; UnknownInvoice for a
        number the organization does not have."""
        check_id("org_id", org_id)
        await self.payments.mark_paid(org_id, number, now=self.ledger.clock(), reference=reference)
        return await self._invoice_paid(org_id, number)

    async def pay_invoice(self, org_id: str, number: str, *, idempotency_key: str | None = None) -> Invoice:
        """The organization pays open invoice `number` with its card now (a payment arrives): charged once per
        `idempotency_key` (default: a new attempt), the invoice paid, the subscription told as for
        `mark_invoice_paid`. PaymentDeclined leaves it open (another attempt may use another card); an invoice
        already paid is answered as it stands, nothing charged."""
        check_id("org_id", org_id)
        await self.payments.pay_invoice(org_id, number, idempotency_key=idempotency_key or uuid.uuid4().hex,
                                        now=self.ledger.clock())
        return await self._invoice_paid(org_id, number)

    async def _invoice_paid(self, org_id: str, number: str) -> Invoice:
        """Tell the subscription an invoice it follows was paid. Should it not answer, the invoice stays paid and
        the subscription finds it so at its next look (its due date or a reminder)."""
        try:
            await self._update(org_id, SubscriptionWorkflow.invoice_paid, number)
        except (InvalidRequest, ServiceUnavailable) as err:
            log.warning("invoice %s of %s paid; its subscription was not told (%s): it sees it at its next look",
                        number, org_id, err)
        [invoice] = await self.payments.invoices(org_id, number=number)  # one row, not every invoice of the org
        return invoice

    async def _handle(self, org_id: str) -> WorkflowHandle[Any, Any]:
        check_id("org_id", org_id)
        return (await self.temporal()).get_workflow_handle(subscription_workflow_id(org_id))

    @staticmethod
    def _not_found(org_id: str, err: RPCError) -> BaseException:
        if err.status == RPCStatusCode.NOT_FOUND:
            return InvalidRequest(f"{org_id} has no subscription: subscribe first")
        return err

    async def _update(self, org_id: str, update: Any, arg: Any) -> Subscription:
        handle = await self._handle(org_id)
        try:
            async with _answered_within(self.deadline, f"changing the subscription of {org_id}"):
                if arg is None:
                    result: Subscription = await handle.execute_update(update, rpc_timeout=self.deadline)
                else:
                    result = await handle.execute_update(update, arg, rpc_timeout=self.deadline)
            return result
        except WorkflowUpdateFailedError as err:
            raise _billing_error(err) from None
        except RPCError as err:
            raise self._not_found(org_id, err) from None

    # -- metering ----------------------------------------------------------------------------------
    async def debit(
        self, org_id: str, *, action: str, idempotency_key: str, tier: str | None = None,
        quantity: int | Decimal = 1, user_id: str | None = None, country: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> DebitResult:
        """Charge the cost of `action` now; refused whole (InsufficientCredits) if it does not fit. One round
        trip; a debit that leaves the balance under the auto-recharge threshold also starts the recharge.
        `tags` ({"campaign": "spring"}: at most 10, models/tags.py) are stored with the usage row."""
        result = await self.ledger.debit(org_id, action, idempotency_key=idempotency_key, tier=tier,
                                         quantity=quantity, user_id=user_id, country=country, tags=tags)
        if result.recharge_triggered:
            await self._trigger_recharge(org_id, idempotency_key)
        return result

    async def _trigger_recharge(self, org_id: str, reason: str) -> None:
        """Signal-with-start the organization's auto-recharge. The debit has committed whatever happens
        here: if the signal is lost, the recharge lease runs out (15 min) and the next debit under the
        threshold asks again."""
        try:
            client = await self.temporal()
            async with asyncio.timeout(TRIGGER_DEADLINE.total_seconds()):
                await client.start_workflow(
                    AutoRechargeWorkflow.run, RechargeRun(org_id), id=recharge_workflow_id(org_id),
                    task_queue=self.settings.task_queue, start_signal="trigger",
                    start_signal_args=[RechargeTrigger(reason, self.ledger.clock())],
                    search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, org_id)]),
                    static_summary=f"Auto-recharge of organization {org_id}")
        except Exception:
            log.exception("auto-recharge of %s: the trigger was not delivered (asked again after the lease)",
                          org_id)

    @asynccontextmanager
    async def hold(
        self, org_id: str, *, action: str, idempotency_key: str, tier: str | None = None,
        quantity: int | Decimal = 1, user_id: str | None = None, country: str | None = None,
        ttl: timedelta | None = None, tags: Mapping[str, str] | None = None,
    ) -> AsyncIterator[HoldResult]:
        """`async with billing.hold(...) as h:` reserves now, commits if the block succeeds, releases if
        it raises; a hold left open past its TTL releases itself. A reservation that leaves the balance
        under the auto-recharge threshold starts the recharge, as a debit does."""
        held = await self.open_hold(org_id, action=action, idempotency_key=idempotency_key, tier=tier,
                                    quantity=quantity, user_id=user_id, country=country, ttl=ttl, tags=tags)
        try:
            yield held
        except BaseException:
            await self.release_hold(org_id, idempotency_key)
            raise
        await self.commit_hold(org_id, idempotency_key)

    async def open_hold(
        self, org_id: str, *, action: str, idempotency_key: str, tier: str | None = None,
        quantity: int | Decimal = 1, user_id: str | None = None, country: str | None = None,
        ttl: timedelta | None = None, tags: Mapping[str, str] | None = None,
    ) -> HoldResult:
        """Reserve the cost of `action` under `idempotency_key` (the hold's id) until `commit_hold` or
        `release_hold`, or its TTL (then it releases itself): for callers whose work outlives one `async with`
        (the HTTP API, the credits middleware). Starts the auto-recharge as a debit does. The hold's `tags` go
        to the usage row its commit writes."""
        held = await self.ledger.hold(org_id, action, idempotency_key=idempotency_key, tier=tier,
                                      quantity=quantity, user_id=user_id, country=country, ttl=ttl, tags=tags)
        if held.recharge_triggered:
            await self._trigger_recharge(org_id, idempotency_key)
        return held

    async def commit_hold(self, org_id: str, idempotency_key: str) -> HoldResult:
        """Charge an open hold's reservation (HoldNotOpen when it was released or expired)."""
        return await self.ledger.commit(org_id, idempotency_key)

    async def release_hold(self, org_id: str, idempotency_key: str) -> HoldResult:
        """Give an open hold's reservation back (HoldNotOpen when it was committed)."""
        return await self.ledger.release(org_id, idempotency_key)

    async def balance(self, org_id: str) -> Balance:
        return await self.ledger.balance(org_id)

    async def usage(
        self, org_id: str, *, by: UsageGrouping = "action", since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRow]:
        return await self.ledger.usage(org_id, by=by, since=since, until=until)

    async def transactions(
        self, org_id: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[Transaction]:
        return await self.ledger.transactions(org_id, since=since, until=until)

    # -- usage insight (ledger/insight.py, DESIGN.md section 11) -------------------------------------------

    async def usage_log(
        self, org_id: str, *, action: str | None = None, tier: str | None = None, user_id: str | None = None,
        tags: Mapping[str, str] | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LOG_LIMIT, cursor: str | None = None,
    ) -> UsagePage:
        """The usage events over [since, until), newest first, filtered (every given tag must match); a page of
        at most `limit` (1-1000). Pass the page's `next_cursor` back for the next one (None: the last page)."""
        return await self.insight.log(org_id, action=action, tier=tier, user_id=user_id, tags=tags, since=since,
                                      until=until, limit=limit, cursor=cursor)

    async def usage_summary(
        self, org_id: str, *, since: datetime | None = None, until: datetime | None = None,
        user_id: str | None = None,
    ) -> list[ActionSummary]:
        """Per action over [since, until): uses, quantity, credits and credits per use, most credits first."""
        return await self.insight.summary(org_id, since=since, until=until, user_id=user_id)

    async def usage_series(
        self, org_id: str, *, since: datetime, until: datetime, bucket: SeriesBucket = "day",
        by: SeriesBy | None = None, user_id: str | None = None,
    ) -> list[SeriesPoint]:
        """Uses and credits per UTC day (or hour) over [since, until), per action or user if `by`; every bucket
        of every key seen, zeros included (for graphs)."""
        return await self.insight.series(org_id, since=since, until=until, bucket=bucket, by=by, user_id=user_id)

    async def lifetime_totals(self, org_id: str) -> LifetimeTotals:
        """Credits added (plans, packs) and used since the organization's wallet was opened."""
        return await self.insight.lifetime(org_id)

    async def export_usage(
        self, org_id: str, *, fmt: ExportFormat = "csv", since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[bytes]:
        """The usage events of [since, until) as CSV or JSON lines, streamed in bounded memory. Everything is
        checked before this returns: iterating only streams."""
        return await self.insight.export(org_id, what="usage", fmt=fmt, since=since, until=until)

    async def export_transactions(
        self, org_id: str, *, fmt: ExportFormat = "csv", since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[bytes]:
        """The ledger's entries of [since, until) as CSV or JSON lines, streamed as `export_usage` is."""
        return await self.insight.export(org_id, what="transactions", fmt=fmt, since=since, until=until)

    async def projection(self, org_id: str) -> Projection | None:
        """The period's projected use at its burn rate so far (None: a period without an end)."""
        return await self.insight.projection(org_id)

    async def set_runway_alert(self, org_id: str, enabled: bool) -> None:
        """Email (and the credits.runway event) once a period when the projection runs past the allocation."""
        await runway.set_runway_alert(self.ledger.pool, org_id, enabled)

    async def runway_alert(self, org_id: str) -> bool:
        return await runway.runway_alert(self.ledger.pool, org_id)

    async def member_usage(self, org_id: str, user_id: str) -> MemberUsage:
        """A user's usage this period, its limit and what remains of it, per action."""
        return await self.insight.member_usage(org_id, user_id)

    # -- quotas (ledger/quotas.py) ---------------------------------------------------------------------

    async def record_usage(
        self, org_id: str, quota: str, *, quantity: int | Decimal = 1, idempotency_key: str,
    ) -> QuotaResult:
        """Count `quantity` against the plan's `quota` this period, once per `idempotency_key` (a repeat answers
        `replayed`). Past a hard limit: QuotaExceeded, nothing counted."""
        return await self.quota_counts.record(org_id, quota, quantity=quantity, idempotency_key=idempotency_key)

    async def quotas(self, org_id: str) -> list[QuotaUsage]:
        """Every quota of the organization's plan: used this period against its limit, with the 80% warning."""
        return await self.quota_counts.usage(org_id)

    # -- credit packs and auto-recharge ----------------------------------------------------------------

    async def buy_credits(
        self, org_id: str, *, pack: str | None = None, credits: Decimal | None = None,
        idempotency_key: str | None = None, email: str | None = None, payment_method: str | None = None,
    ) -> PackPurchase:
        """Buy a credit pack ("500", "1000", "2500", "5000"), or any amount of `credits` at the catalog's
        per-credit price (default catalog: 0.20 each, at least 100; the total rounded half-up to the cent):
        exactly one of `pack` and `credits`. Charged once, its credits granted once (they never expire),
        invoice and receipt email. The same `idempotency_key` again returns the first purchase (another
        pack or amount under it is IdempotencyConflict). Raises PaymentDeclined when the card is declined:
        nothing is granted. An organization that has never subscribed passes `email` and `payment_method`
        (its billing contact and card). Priced on the current catalog version."""
        check_id("org_id", org_id)
        catalog = CATALOGS.current
        if (pack is None) == (credits is None):
            raise InvalidRequest("buy a pack or an amount of credits: pass exactly one of pack and credits "
                                 f"(got pack={shown(pack)}, credits={shown(credits)})")
        if credits is not None:
            credits = catalog.check_credits(credits)  # a number, at least the minimum: before anything starts
            what = f"{credits} credits"
        else:
            catalog.pack(check_name("pack", pack))
            what = f"pack {pack}"
        key = check_id("idempotency_key", idempotency_key) if idempotency_key is not None else uuid.uuid4().hex
        if payment_method is not None:
            check_id("payment_method", payment_method)
        await self.ledger.balance(org_id)  # UnknownOrganization before anything starts
        if email is not None or payment_method is not None:
            await self._ensure_customer(org_id, email, payment_method)  # PaymentDeclined at attach, say
        client = await self.temporal()
        wf_id = pack_workflow_id(org_id, key)
        async with _answered_within(self.deadline, f"buying {what} for {org_id}"):
            try:
                handle = await client.start_workflow(
                    PackPurchaseWorkflow.run,
                    BuyPack(org_id, pack, pack_key(org_id, key), credits, catalog.version), id=wf_id,
                    task_queue=self.settings.task_queue,
                    # A run that failed (Stripe refused the request: nothing charged) may be asked again.
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_ID, org_id)]),
                    static_summary=f"{what.capitalize()} for organization {org_id}")
            except WorkflowAlreadyStartedError:  # bought before: the first answer stands
                handle = client.get_workflow_handle(wf_id, result_type=PackPurchase)
            try:
                result: PackPurchase = await handle.result()
            except WorkflowFailureError as err:
                raise _billing_error(err) from None
        if result.pack != pack or (credits is not None and result.credits != credits):
            raise IdempotencyConflict(org_id, key)
        return result

    async def _ensure_customer(self, org_id: str, email: str | None, payment_method: str | None) -> None:
        profile = await self.payments.profile(org_id)
        contact = email or (profile.email if profile else None)
        if contact is None:
            raise InvalidRequest(f"{org_id} has no billing contact yet: pass email with payment_method")
        await self.payments.ensure_customer(EnsureCustomer(
            org_id, contact, self.ledger.clock(), payment_method,
            profile.vat_rate if profile else Decimal(0), profile.currency if profile else "EUR"))

    async def set_auto_recharge(
        self, org_id: str, *, threshold: Decimal, pack: str | None = None,
        spending_limit_cents: int = DEFAULT_SPENDING_LIMIT_CENTS, enabled: bool = True,
        credits: Decimal | None = None,
    ) -> AutoRechargeSettings:
        """When a debit leaves the balance under `threshold` credits, buy `pack`s, or amounts of `credits` at
        the catalog's per-credit price (exactly one of the two; as many as bring it back above, in one
        charge), spending at most `spending_limit_cents` (tax included) per billing period (free
        organizations: per calendar month). Takes effect at once; `enabled=False` turns it off."""
        return await self.auto_recharges.set(org_id, threshold=threshold, pack=pack,
                                              spending_limit_cents=spending_limit_cents, enabled=enabled,
                                              credits=credits)

    async def auto_recharge(self, org_id: str) -> AutoRechargeSettings | None:
        """The organization's auto-recharge settings (None: never set). `disabled_reason` says why the
        engine turned it off ("payment_failed")."""
        return await self.auto_recharges.get(org_id)

    # -- organization controls ---------------------------------------------------------------------
    async def set_user_limit(self, org_id: str, user_id: str, limit: Decimal | None) -> None:
        await self.ledger.set_user_limit(org_id, user_id, limit)

    async def set_usage_guard(
        self, org_id: str, action: str, *, max_uses: int | None, window: timedelta = timedelta(hours=1)
    ) -> None:
        await self.ledger.set_usage_guard(org_id, action, max_uses=max_uses, window=window)

    async def resume_action(self, org_id: str, action: str) -> bool:
        return await self.ledger.resume_action(org_id, action)

    async def set_low_balance_alert(self, org_id: str, threshold: Decimal | None) -> None:
        await self.ledger.set_low_balance_alert(org_id, threshold)

    async def open_wallet(self, org_id: str, *, plan: str = "free") -> LedgerWriteResult:
        """Open a free organization's wallet (50 credits per UTC day) so it can meter before it ever
        subscribes. Idempotent per organization. Paid plans come only with a subscription (`subscribe`):
        their credits are granted when the period is paid."""
        check_id("org_id", org_id)
        if not CATALOG.plan(check_name("plan", plan)).is_free:
            raise InvalidRequest(f"the {plan} plan's credits come with a subscription: subscribe to it")
        now = self.ledger.clock()
        try:
            return await self.ledger.start_period(
                StartPeriod(org_id, open_wallet_key(org_id, plan), plan, now, None, now))
        except IdempotencyConflict:
            # Opened before, at another moment (the request records its time): the same request, a repeat.
            return LedgerWriteResult(org_id, (await self.ledger.balance(org_id)).available, True)


__all__ = ["Balance", "BillingClient", "BillingError", "DebitResult", "HoldResult"]
