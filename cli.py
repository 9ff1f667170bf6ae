"""The `billing` command: the CLI over BillingClient, and the operator's steps (`billing migrate`).

    billing migrate                      # bring the schema up to date (tables, then the ledger's functions)
    billing subscribe acme --plan pro --email ops@acme.test
    billing balance acme
    billing serve --port 8480            # the HTTP API alone (docs/api.md), beside workers running elsewhere
    billing keys create --role admin --org acme
    billing contract set cloro --term-start 2026-01-01 --term-end 2027-01-01 --allowance-multiplier 1.2 \
        --concurrency-multiplier 1.3 --overage --overage-rate-cents 0.4
    billing catalog show                 # the current catalog version's plans, packs and per-credit price
    billing debit acme lead_enrichment --key k1 --tag campaign=spring --tag country=FR
    billing usage log acme --tag campaign=spring --since 2026-01-01 --limit 20   # then --cursor ... for more
    billing usage export acme --what usage --format csv --output usage.csv       # streamed, any size
    billing status acme                  # the subscription, then usage bars: credits and quotas this period

With DATABASE_URL unset and BILLING_DEV_MODE=1, it uses the embedded development PostgreSQL under .data/
(the one the main command, `python3 tasks.py run`, starts and migrates): the `embedded` extra. Outside
development mode an unset DATABASE_URL is refused: nothing embedded starts because a variable is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvloop
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from api.app import create_app
from api.keys import ApiKeys, first_platform_key
from api.server import serving
from audit import DEFAULT_LIMIT, DEFAULT_PENDING_BOUND, AuditReport, run_audit
from ledger.migrate import migrate as apply_migrations
from models.api_types import ApiKey, NewKey
from models.auto_recharge import per_credit
from models.auto_recharge_types import AutoRechargeSettings
from models.billing_types import Invoice
from models.catalog import CATALOGS, Catalog
from models.checks import utcnow
from models.contract_types import ContractTerms, describe, number_text
from models.errors import BillingError, InvalidRequest, ServiceUnavailable
from models.insight_types import (
    DEFAULT_LOG_LIMIT,
    MAX_LOG_LIMIT,
    ActionSummary,
    LifetimeTotals,
    MemberUsage,
    SeriesPoint,
    UsagePage,
)
from models.ledger_types import Balance
from models.money import Money
from models.projection import Projection
from models.quota_types import WARNING_PERCENT, QuotaResult, QuotaUsage, percent_of
from models.subscription_types import Subscription
from models.tags import check_tags, tag_filter, tag_pairs
from settings import InvalidSetting, Settings
from starter import BillingClient
from temporal_client import connect_client

cli = typer.Typer(help="Billing engine: subscriptions, metering, balances, invoices.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys of the HTTP API (`billing serve`): create, list, revoke.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
contract_cli = typer.Typer(help="An organization's contract terms over its plan (docs/contracts.md): set, show, end.",
                           no_args_is_help=True)
cli.add_typer(contract_cli, name="contract")
catalog_cli = typer.Typer(help="The catalog's versions: show one, migrate a subscription to one.", no_args_is_help=True)
cli.add_typer(catalog_cli, name="catalog")


class _UsageGroup(TyperGroup):
    """`billing usage`: a group of views (log, summary, series, ...) that still answers its older form, `billing
    usage ORG --by user`: a first word that names no view is read as `billing usage grouped ORG ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Any: typer's vendored click Context is private
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["grouped", *args]
        return super().parse_args(ctx, args)


usage_cli = typer.Typer(cls=_UsageGroup, no_args_is_help=True,
                        help="Usage: grouped (also `billing usage ORG --by user`), the event log, per-action summary, "
                             "series, lifetime totals, exports, the period's projection, a member's own usage.")
cli.add_typer(usage_cli, name="usage")
quota_cli = typer.Typer(help="Non-credit quotas of the plan (sessions, events, storage): record use, show usage.",
                        no_args_is_help=True)
cli.add_typer(quota_cli, name="quota")
_SINCE = "from this day (2026-01-01, midnight UTC) or time with its offset (2026-01-01T09:00:00Z)"
_UNTIL = "before this day or time (excluded)"
console = Console()
err_console = Console(stderr=True)  # refusals of a command whose standard output is data (an export)
_T = TypeVar("_T")


async def _settings() -> Settings:
    """The environment's settings; without DATABASE_URL, in development mode only, the embedded
    development database's URL (started if needed)."""
    settings = Settings.from_env()
    if settings.database_url:
        return settings
    if not settings.dev_mode:
        raise ServiceUnavailable("DATABASE_URL is not set (BILLING_DEV_MODE=1 uses the embedded development "
                             "database that `python3 tasks.py run` starts)")
    from stack.services import database  # the embedded stack: development only, imported on demand

    url, _ = await database(settings)
    return dataclasses.replace(settings, database_url=url)


@asynccontextmanager
async def _client() -> AsyncIterator[BillingClient]:
    billing = await BillingClient.connect(await _settings())
    try:
        yield billing
    finally:
        await billing.close()


def _run(coro_fn: Callable[[BillingClient], Any], *, errors: Console = console) -> Any:
    async def go() -> Any:
        async with _client() as billing:
            return await coro_fn(billing)

    return _answer(go(), errors=errors)


def _answer(coro: Coroutine[Any, Any, Any], *, errors: Console = console) -> Any:
    """Run `coro`; a BillingError is printed as the typed refusal it is (exit status 2)."""
    try:
        return uvloop.run(coro)
    except BillingError as exc:
        _refuse(exc, errors)


def _parsed(parse: Callable[[], _T], *, errors: Console = console) -> _T:
    """Options read before connecting to anything: text that is no valid option is refused as the engine refuses
    it (exit status 2, nothing done)."""
    try:
        return parse()
    except BillingError as exc:
        _refuse(exc, errors)


def _refuse(exc: BillingError, errors: Console = console) -> NoReturn:
    errors.print(f"[red]{type(exc).__name__}[/red]: {exc.message}")
    raise typer.Exit(2) from None


def _show(sub: Subscription) -> None:
    t = Table(title=f"{sub.org_id}: subscription")
    for col in ("plan", "seats", "interval", "status", "period", "at period end", "catalog"):
        t.add_column(col)
    pending = [p for p in (sub.pending_plan and f"downgrade to {sub.pending_plan}",
                           sub.pending_seats and f"{sub.pending_seats} seats",
                           sub.cancel_at_period_end and "cancel to Free") if p]
    period = "" if sub.period_start is None else f"{sub.period_start:%Y-%m-%d} to {sub.period_end:%Y-%m-%d}"
    if sub.status == "trialing":
        period += f" (trial ends {sub.trial_end:%Y-%m-%d})"
    t.add_row(sub.plan, str(sub.seats), sub.interval, sub.status, period, ", ".join(pending),
              f"v{sub.catalog_version}")
    console.print(t)
    console.print(f"contract: {describe(sub.contract, _currency(sub.catalog_version))}" if sub.contract
                  else "contract: none (the plan's own terms)")
    if sub.incident:
        console.print(f"[red]incident[/red]: {sub.incident}")


@cli.command()
def subscribe(
    org_id: str,
    plan: Annotated[str, typer.Option()],
    email: Annotated[str, typer.Option(help="the billing contact")],
    seats: Annotated[int, typer.Option()] = 1,
    interval: Annotated[str, typer.Option(help="month or year")] = "month",
    trial_days: Annotated[int, typer.Option()] = 0,
    payment_method: Annotated[str | None, typer.Option(help="a Stripe PaymentMethod id")] = None,
) -> None:
    """Start a subscription (the worker must be running: `python3 tasks.py run`)."""
    _show(_run(lambda b: b.subscribe(org_id, plan=plan, seats=seats, interval=interval,  # type: ignore[arg-type]
                                     trial_days=trial_days, email=email, payment_method=payment_method)))


@cli.command()
def upgrade(org_id: str, plan: Annotated[str, typer.Option()]) -> None:
    """Move to a higher plan now (prorated charge)."""
    _show(_run(lambda b: b.upgrade(org_id, plan=plan)))


@cli.command()
def downgrade(org_id: str, plan: Annotated[str, typer.Option()]) -> None:
    """Move to a lower plan at period end (the current plan withdraws a pending downgrade)."""
    _show(_run(lambda b: b.downgrade(org_id, plan=plan)))


@cli.command()
def seats(org_id: str, count: int) -> None:
    """Change the number of seats: more now (prorated), fewer from the next period."""
    _show(_run(lambda b: b.change_seats(org_id, seats=count)))


@cli.command()
def cancel(org_id: str) -> None:
    """Cancel to Free at period end."""
    _show(_run(lambda b: b.cancel(org_id)))


@cli.command()
def resume(org_id: str) -> None:
    """Undo a cancellation before the period ends."""
    _show(_run(lambda b: b.resume(org_id)))


@cli.command()
def status(org_id: str) -> None:
    """Show an organization's subscription (and its open incident, if a step failed for good), then its usage
    this period as bars: credits consumed of the period's allocation and each quota used of its limit (green,
    amber from 80%, red at 100%)."""
    async def go(b: BillingClient) -> tuple[Subscription, Balance, list[QuotaUsage]]:
        return await b.subscription(org_id), await b.balance(org_id), await b.quotas(org_id)

    sub, bal, quotas = _run(go)
    _show(sub)
    _print_bars("usage this period",
                [usage_bar("credits", bal.consumed_this_period, bal.allocation)]
                + [usage_bar(q.quota, q.used, q.limit) for q in quotas])


# -- usage bars (a pure rule: tests call it without a terminal) ---------------------------------------------

BAR_WIDTH = 24


@dataclass(frozen=True)
class UsageBar:
    """One bar of `billing status`: what is used of a limit, in the colour of how close it is."""

    label: str
    used: Decimal
    limit: Decimal | None   # None: no limit (no bar, the figure alone)
    percent: int | None     # used/limit in whole percent, rounded down (79.9% is 79%: still green), past 100 when over
    colour: str             # green; yellow (amber) from 80%; red at 100%; dim without a limit
    cells: str              # BAR_WIDTH cells, filled in proportion (full at and past the limit)

    def markup(self) -> str:
        """The bar in rich markup, its percent and its exact figures beside it."""
        if self.limit is None:
            return f"[{self.colour}]{self.cells}[/{self.colour}] {number_text(self.used)} (no limit)"
        return (f"[{self.colour}]{self.cells}[/{self.colour}] {self.percent}% "
                f"{number_text(self.used)} of {number_text(self.limit)}")


def usage_bar(label: str, used: Decimal, limit: Decimal | None, *, width: int = BAR_WIDTH) -> UsageBar:
    """The bar of `used` of `limit`. The colour is decided on the exact figures (used * 100 against limit * 80),
    never on a rounded percent; a limit of 0 or none is no limit."""
    if limit is None or limit <= 0:
        return UsageBar(label, used, None, None, "dim", "\u2591" * width)
    percent = percent_of(used, limit)
    colour = "red" if used >= limit else "yellow" if used * 100 >= limit * WARNING_PERCENT else "green"
    filled = min(width, int(max(used, Decimal(0)) * width // limit))
    return UsageBar(label, used, limit, percent, colour, "\u2588" * filled + "\u2591" * (width - filled))


def _print_bars(title: str, bars: list[UsageBar]) -> None:
    t = Table(title=title)
    t.add_column("")
    t.add_column("used of the limit")
    for bar in bars:
        t.add_row(bar.label, bar.markup())
    console.print(t)


@cli.command()
def retry(org_id: str) -> None:
    """Run a subscription's failed step again now, instead of at its next backoff."""
    _show(_run(lambda b: b.retry_now(org_id)))


@cli.command()
def invoices(org_id: str) -> None:
    """List an organization's invoices."""
    rows = _run(lambda b: b.invoices(org_id))
    t = Table(title=f"{org_id} invoices")
    for col in ("number", "date", "purpose", "subtotal", "tax", "total", "status", "payment"):
        t.add_column(col)
    for i in rows:
        t.add_row(i.number, f"{i.issued_at:%Y-%m-%d}", i.purpose, str(Money(i.subtotal_cents, i.currency)),
                  str(Money(i.tax_cents, i.currency)), str(Money(i.total_cents, i.currency)), _invoice_status(i),
                  i.stripe_payment_id)
    console.print(t)


def _invoice_status(i: Invoice) -> str:
    """paid, or open with its due date (and since when it is overdue: in dunning)."""
    if i.status == "paid":
        return "paid" if i.paid_at is None else f"paid {i.paid_at:%Y-%m-%d}"
    due = "" if i.due_at is None else f", due {i.due_at:%Y-%m-%d}"
    overdue = "" if i.overdue_at is None else f", overdue since {i.overdue_at:%Y-%m-%d}"
    return f"open{due}{overdue}"


@cli.command("mark-paid")
def mark_paid(
    org_id: str, number: Annotated[str, typer.Argument(help="the open invoice's number (INV-2026-000042)")],
    reference: Annotated[str | None, typer.Option(help="the transfer's reference, for the record")] = None,
) -> None:
    """Record that an open invoice (invoice payment terms) was paid, by bank transfer say: it is paid at once and
    the subscription sends the receipt and stops its reminders. A repeat answers as the first."""
    i = _run(lambda b: b.mark_invoice_paid(org_id, number, reference=reference))
    console.print(f"{org_id}: invoice {i.number} {_invoice_status(i)}, {Money(i.total_cents, i.currency)}")


@cli.command("pay-invoice")
def pay_invoice(
    org_id: str, number: Annotated[str, typer.Argument(help="the open invoice's number (INV-2026-000042)")],
    key: Annotated[str | None, typer.Option(help="idempotency key of this attempt (default: a new attempt)")] = None,
) -> None:
    """Pay an open invoice (invoice payment terms) with the organization's card now: charged once per attempt,
    paid at once; a declined card leaves it open."""
    i = _run(lambda b: b.pay_invoice(org_id, number, idempotency_key=key))
    console.print(f"{org_id}: invoice {i.number} {_invoice_status(i)}, {Money(i.total_cents, i.currency)}")


@cli.command()
def card(
    org_id: str, kind: Annotated[str, typer.Argument(help="ok, declined, requires_authentication or none")],
) -> None:
    """Give an organization a test card on the fake Stripe (localstripe; not with STRIPE_API_KEY)."""
    async def go(b: BillingClient) -> str | None:
        if b.settings.stripe_api_key:
            raise InvalidRequest("test cards are for the fake Stripe: attach real payment methods with Stripe")
        from testkit.payments import KitPayments  # test cards: the test kit's side

        cards = KitPayments(b.ledger.pool, b.payments.stripe)
        return await cards.set_card(org_id, kind)  # type: ignore[arg-type]

    pm = _run(go)
    console.print(f"{org_id}: default payment method {pm or 'removed'} ({kind})")


@cli.command("open")
def open_cmd(org_id: str, plan: Annotated[str, typer.Option()] = "free") -> None:
    """Open a free organization's wallet (paid plans: subscribe)."""
    r = _run(lambda b: b.open_wallet(org_id, plan=plan))
    console.print(f"{org_id}: wallet on {plan}, {r.available} credits available")


@cli.command()
def debit(
    org_id: str, action: str,
    key: Annotated[str, typer.Option(help="idempotency key")],
    tier: Annotated[str | None, typer.Option()] = None,
    quantity: Annotated[str, typer.Option()] = "1",
    user: Annotated[str | None, typer.Option()] = None,
    country: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[list[str] | None, typer.Option(help="name=value stored with the usage (campaign=spring); "
                                                       "repeatable, at most 10")] = None,
) -> None:
    """Charge one action now."""
    tags = _parsed(lambda: check_tags(_tags("--tag", tag)))
    r = _run(lambda b: b.debit(org_id, action=action, idempotency_key=key, tier=tier,
                               quantity=Decimal(quantity), user_id=user, country=country, tags=tags))
    note = " (repeat: first result)" if r.replayed else ""
    console.print(f"{org_id}: charged {r.cost} credits, {r.available} available{note}")


@cli.command()
def buy(
    org_id: str,
    pack: Annotated[str | None, typer.Argument(help="500, 1000, 2500 or 5000 (or --credits)")] = None,
    credits: Annotated[str | None, typer.Option(help="any amount of credits at the catalog's per-credit price "
                                                     "(default catalog: 0.20 each, at least 100)")] = None,
    key: Annotated[str | None, typer.Option(help="idempotency key (default: a new purchase)")] = None,
) -> None:
    """Buy a credit pack, or any amount of credits with --credits (the worker must be running:
    `python3 tasks.py run`)."""
    p = _run(lambda b: b.buy_credits(org_id, pack=pack, credits=_credits(credits), idempotency_key=key))
    what = f"pack {p.pack} ({p.credits} credits)" if p.pack is not None else f"{p.credits} credits"
    console.print(f"{org_id}: {what} for {Money(p.amount_cents, p.currency)}, "
                  f"invoice {p.invoice_number}; {p.available} credits available")


def _credits(text: str | None) -> Decimal | None:
    """--credits as exact credits; text that is no number is the engine's own refusal (InvalidRequest)."""
    if text is None:
        return None
    try:
        return Decimal(text)
    except ArithmeticError:
        raise InvalidRequest(f"--credits must be a number of credits, got {text!r}") from None


@cli.command("auto-recharge")
def auto_recharge_cmd(
    org_id: str,
    threshold: Annotated[str | None, typer.Option(help="credits; omit every option to show the settings")] = None,
    pack: Annotated[str | None, typer.Option(help="the pack to buy (default 500, unless --credits)")] = None,
    credits: Annotated[str | None, typer.Option(help="buy this amount of credits instead of a pack")] = None,
    limit_cents: Annotated[int, typer.Option(help="spending limit per billing period")] = 5000,
    off: Annotated[bool, typer.Option("--off", help="turn auto-recharge off")] = False,
) -> None:
    """Set (or show) an organization's auto-recharge."""
    async def go(b: BillingClient) -> AutoRechargeSettings | None:
        if threshold is None and not off:
            return await b.auto_recharge(org_id)
        current = await b.auto_recharge(org_id)
        value = Decimal(threshold) if threshold is not None else (current.threshold if current else Decimal(0))
        amount = _credits(credits)
        return await b.set_auto_recharge(org_id, threshold=value, pack=pack if pack or amount else "500",
                                         credits=amount, spending_limit_cents=limit_cents, enabled=not off)

    st = _run(go)
    if st is None:
        console.print(f"{org_id}: auto-recharge was never set")
        return
    state = "on" if st.enabled else f"off ({st.disabled_reason})" if st.disabled_reason else "off"
    buys = f"pack {st.pack}" if st.pack is not None else f"{st.credits} credits"
    console.print(f"{org_id}: auto-recharge {state}: under {st.threshold} credits buy {buys}, "
                  f"at most {Money(st.spending_limit_cents)} per billing period")


@cli.command()
def balance(org_id: str) -> None:
    """Show an organization's balance."""
    b = _run(lambda c: c.balance(org_id))
    t = Table(title=f"{org_id} on {b.plan_name}")
    for col in ("available", "plan", "topup", "held", "allocation", "consumed this period"):
        t.add_column(col, justify="right")
    t.add_row(*(str(v) for v in (b.available, b.plan, b.topup, b.held, b.allocation, b.consumed_this_period)))
    console.print(t)


@usage_cli.command("grouped")
def usage_grouped(
    org_id: str, by: Annotated[str, typer.Option(help="action, tier or user")] = "action",
    since: Annotated[str | None, typer.Option(help=_SINCE)] = None,
    until: Annotated[str | None, typer.Option(help=_UNTIL)] = None,
) -> None:
    """Usage grouped by action, tier or user (also `billing usage ORG --by ...`, the older form)."""
    start, end = _parsed(lambda: (_opt_time("--since", since), _opt_time("--until", until)))
    rows = _run(lambda c: c.usage(org_id, by=by, since=start, until=end))  # type: ignore[arg-type]
    t = Table(title=f"{org_id} usage by {by}")
    t.add_column(by)
    for col in ("uses", "quantity", "credits"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row("-" if r.key is None else r.key, f"{r.uses:,}", number_text(r.quantity), number_text(r.credits))
    console.print(t)


def _tags(option: str, values: list[str] | None) -> dict[str, str]:
    """Repeated `--tag name=value` as a map; text without '=' or a name given twice is refused typed."""
    return tag_pairs(values, sep="=", what=option) or {}


def _opt_time(option: str, text: str | None) -> datetime | None:
    return None if text is None else _time(option, text)


def _when(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _period(start: datetime, end: datetime | None) -> str:
    return f"{start:%Y-%m-%d %H:%M} to {'no end' if end is None else f'{end:%Y-%m-%d %H:%M}'}"


@usage_cli.command("log")
def usage_log(
    org_id: str,
    action: Annotated[str | None, typer.Option(help="only this action")] = None,
    tier: Annotated[str | None, typer.Option(help="only this tier")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's usage")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="name=value: only usage with this tag (repeatable: every "
                                                       "one must match)")] = None,
    since: Annotated[str | None, typer.Option(help=_SINCE)] = None,
    until: Annotated[str | None, typer.Option(help=_UNTIL)] = None,
    limit: Annotated[int, typer.Option(help=f"events on this page (1 to {MAX_LOG_LIMIT})")] = DEFAULT_LOG_LIMIT,
    cursor: Annotated[str | None, typer.Option(help="the next page: the cursor the previous page printed")] = None,
) -> None:
    """The usage events, newest first, a page at a time (the next page's cursor is printed under the table)."""
    filters, start, end = _parsed(lambda: (tag_filter(_tags("--tag", tag)), _opt_time("--since", since),
                                           _opt_time("--until", until)))
    page: UsagePage = _run(lambda b: b.usage_log(org_id, action=action, tier=tier, user_id=user,
                                                 tags=filters or None, since=start, until=end, limit=limit,
                                                 cursor=cursor))
    t = Table(title=f"{org_id} usage log")
    for col in ("at", "key", "source", "action", "tier", "quantity", "country", "user", "credits", "tags"):
        t.add_column(col, justify="right" if col in ("quantity", "credits") else "left")
    for e in page.events:
        t.add_row(_when(e.at), e.idempotency_key, e.source, e.action, e.tier or "", number_text(e.quantity),
                  e.country or "", e.user_id or "", number_text(e.credits),
                  " ".join(f"{k}={v}" for k, v in sorted(e.tags.items())))
    console.print(t)
    console.print(f"next page: --cursor {page.next_cursor}" if page.next_cursor else "last page")


@usage_cli.command("summary")
def usage_summary(
    org_id: str,
    since: Annotated[str | None, typer.Option(help=_SINCE)] = None,
    until: Annotated[str | None, typer.Option(help=_UNTIL)] = None,
    user: Annotated[str | None, typer.Option(help="only this user's usage")] = None,
) -> None:
    """Per action over a range: uses, quantity, credits and credits per use (most credits first)."""
    start, end = _parsed(lambda: (_opt_time("--since", since), _opt_time("--until", until)))
    rows: list[ActionSummary] = _run(lambda b: b.usage_summary(org_id, since=start, until=end, user_id=user))
    t = Table(title=f"{org_id} usage by action")
    t.add_column("action")
    for col in ("uses", "quantity", "credits", "credits per use"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r.action, f"{r.uses:,}", number_text(r.quantity), number_text(r.credits),
                  number_text(r.credits_per_use))
    console.print(t)
    console.print(f"total: {sum(r.uses for r in rows):,} uses, "
                  f"{number_text(sum((r.credits for r in rows), Decimal(0)))} credits")


@usage_cli.command("series")
def usage_series(
    org_id: str,
    since: Annotated[str, typer.Option(help=_SINCE)],
    until: Annotated[str, typer.Option(help=_UNTIL)],
    bucket: Annotated[str, typer.Option(help="day or hour (UTC)")] = "day",
    by: Annotated[str | None, typer.Option(help="action or user (default: all usage together)")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's usage")] = None,
) -> None:
    """Uses and credits per day (or hour) over a range, by action or user: every bucket, empty ones included."""
    start, end = _parsed(lambda: (_time("--since", since), _time("--until", until)))
    points: list[SeriesPoint] = _run(lambda b: b.usage_series(
        org_id, since=start, until=end, bucket=bucket, by=by, user_id=user))  # type: ignore[arg-type]
    t = Table(title=f"{org_id} usage per {bucket}" + (f" by {by}" if by else ""))
    t.add_column(bucket)
    if by:
        t.add_column(by)
    for col in ("uses", "credits"):
        t.add_column(col, justify="right")
    for p in points:
        when = f"{p.start:%Y-%m-%d}" if bucket == "day" else f"{p.start:%Y-%m-%d %H:00}"
        t.add_row(when, *([p.key or "-"] if by else []), f"{p.uses:,}", number_text(p.credits))
    console.print(t)


@usage_cli.command("lifetime")
def usage_lifetime(org_id: str) -> None:
    """Credits added (plan allocations, packs) and used since the organization started."""
    lt: LifetimeTotals = _run(lambda b: b.lifetime_totals(org_id))
    console.print(f"{org_id} since {lt.since:%Y-%m-%d}: added {number_text(lt.added)} credits "
                  f"(plan {number_text(lt.added_plan)}, packs {number_text(lt.added_packs)}), "
                  f"used {number_text(lt.used)}, expired {number_text(lt.expired)}")


class _OutputError(Exception):
    """An export's file could not be written (its OSError in args[0])."""


@usage_cli.command("export")
def usage_export(
    org_id: str,
    what: Annotated[str, typer.Option(help="usage (the usage events) or transactions (the ledger's entries)")],
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    since: Annotated[str | None, typer.Option(help=_SINCE)] = None,
    until: Annotated[str | None, typer.Option(help=_UNTIL)] = None,
    output: Annotated[Path | None, typer.Option(help="write to this file (default: standard output)")] = None,
) -> None:
    """Export usage events or transactions as CSV or JSON lines, streamed as they are read (any number of rows in
    bounded memory). A file is written whole or not at all: under FILE.part, renamed when complete. Refusals go to
    standard error: standard output holds the export alone."""
    start, end = _parsed(lambda: (_opt_time("--since", since), _opt_time("--until", until)), errors=err_console)

    async def go(b: BillingClient) -> int:
        if what == "usage":
            chunks = await b.export_usage(org_id, fmt=fmt, since=start, until=end)  # type: ignore[arg-type]
        elif what == "transactions":
            chunks = await b.export_transactions(org_id, fmt=fmt, since=start, until=end)  # type: ignore[arg-type]
        else:
            raise InvalidRequest(f"--what must be 'usage' or 'transactions', got {what!r}")
        # The export checked its arguments and the organization before returning: nothing is opened before.
        written = 0
        if output is None:
            out = typer.get_binary_stream("stdout")
            async for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
            out.flush()
            return written
        part = output.with_name(output.name + ".part")
        try:
            with part.open("wb") as f:
                async for chunk in chunks:
                    f.write(chunk)
                    written += len(chunk)
            part.replace(output)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # the file's, not the database's (psycopg's errors are no OSError)
                raise _OutputError(exc) from exc
            raise
        return written

    try:
        written = _run(go, errors=err_console)
    except _OutputError as exc:  # no such directory, no space left, a directory by that name
        err = exc.args[0]
        err_console.print(f"[red]{type(err).__name__}[/red]: cannot write {output}: {err.strerror or err}")
        raise typer.Exit(2) from None
    if output is not None:
        console.print(f"{org_id}: {what} exported to {output} ({written:,} bytes, {fmt})")


@usage_cli.command("projection")
def usage_projection(org_id: str) -> None:
    """The period's projected use at its burn rate so far, against its allocation (and the runway alert's
    setting)."""
    async def go(b: BillingClient) -> tuple[Projection | None, bool]:
        return await b.projection(org_id), await b.runway_alert(org_id)

    p, alert = _run(go)
    alert_text = f"runway alert {'on' if alert else 'off'}"
    if p is None:
        console.print(f"{org_id}: the period has no end, nothing to project; {alert_text}")
        return
    runs_out = "" if p.runs_out_at is None else f"; runs out {p.runs_out_at:%Y-%m-%d %H:%M}"
    verdict = "past the allocation" if p.exceeds else "within the allocation"
    due = " (due)" if p.runway_alert_due else ""
    console.print(f"{org_id}: period {_period(p.period_start, p.period_end)}, as of {p.as_of:%Y-%m-%d %H:%M}: "
                  f"used {number_text(p.consumed)} of {number_text(p.allocation)}, "
                  f"{number_text(p.burn_per_day)} a day; projected {number_text(p.projected)} by the period's end, "
                  f"{verdict}{runs_out}; {alert_text}{due}")


@usage_cli.command("member")
def usage_member(org_id: str, user: Annotated[str, typer.Argument(help="the member's user id")]) -> None:
    """A member's own usage this period, their limit and what remains of it, by action."""
    m: MemberUsage = _run(lambda b: b.member_usage(org_id, user))
    source = {"user": "their own", "default": "the organization's default", None: ""}[m.limit_source]
    limit = ("no limit" if m.limit is None else
             f"limit {number_text(m.limit)} ({source}), {number_text(m.remaining or Decimal(0))} remaining")
    console.print(f"{org_id}: {user} used {number_text(m.used)} credits this period "
                  f"({_period(m.period_start, m.period_end)}); {limit}")
    t = Table(title=f"{user} by action")
    t.add_column("action")
    for col in ("uses", "quantity", "credits", "credits per use"):
        t.add_column(col, justify="right")
    for r in m.by_action:
        t.add_row(r.action, f"{r.uses:,}", number_text(r.quantity), number_text(r.credits),
                  number_text(r.credits_per_use))
    console.print(t)


@cli.command("runway-alert")
def runway_alert_cmd(
    org_id: str,
    state: Annotated[str | None, typer.Argument(help="on or off (omit to show the setting)")] = None,
) -> None:
    """Turn the runway alert on or off: an email and a credits.runway webhook event once a period when the
    projection runs past the allocation while use is still under 80% of it."""
    async def go(b: BillingClient) -> bool:
        if state is None:
            return await b.runway_alert(org_id)
        if state not in ("on", "off"):
            raise InvalidRequest(f"the runway alert is 'on' or 'off', got {state!r}")
        await b.set_runway_alert(org_id, state == "on")
        return await b.runway_alert(org_id)

    console.print(f"{org_id}: runway alert {'on' if _run(go) else 'off'}")


@quota_cli.command("record")
def quota_record(
    org_id: str, quota: Annotated[str, typer.Argument(help="the quota's name in the plan's catalog (sessions)")],
    key: Annotated[str, typer.Option(help="idempotency key")],
    quantity: Annotated[str, typer.Option(help="how much to count (a decimal: 1.5 GB of storage)")] = "1",
) -> None:
    """Count use of a quota this period; refused whole (QuotaExceeded) past a hard limit."""
    amount = _parsed(lambda: _decimal("--quantity", quantity) or Decimal(0))
    r: QuotaResult = _run(lambda b: b.record_usage(org_id, quota, quantity=amount, idempotency_key=key))
    limit = "no limit" if r.limit is None else f"of {number_text(r.limit)}{'' if r.hard else ' (soft)'}"
    notes = (" (repeat: first result)" if r.replayed else "") + (" [yellow]warning: 80% reached[/yellow]"
                                                                 if r.warning else "")
    console.print(f"{org_id}: {quota} +{number_text(r.quantity)}, {number_text(r.used)} {limit}{notes}")


@quota_cli.command("show")
def quota_show(org_id: str) -> None:
    """Each quota of the plan: used this period of its limit, as bars."""
    quotas: list[QuotaUsage] = _run(lambda b: b.quotas(org_id))
    if not quotas:
        console.print(f"{org_id}: the plan has no quotas")
        return
    _print_bars(f"{org_id} quotas this period", [usage_bar(q.quota, q.used, q.limit) for q in quotas])


@cli.command()
def transactions(org_id: str) -> None:
    """The ledger entries of an organization."""
    rows = _run(lambda c: c.transactions(org_id))
    t = Table(title=f"{org_id} ledger")
    for col in ("at", "kind", "credits", "bucket", "ref"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.at.isoformat(timespec="seconds"), r.kind, str(r.credits), r.bucket or "", r.ref)
    console.print(t)


# -- contracts and catalog versions (docs/contracts.md) ---------------------------------------------------


def _currency(version: int) -> str:
    """The currency a subscription on catalog `version` pays in (the current catalog's if this process does not
    know the version: a worker may ship a newer one)."""
    return (CATALOGS.get(version) if version in CATALOGS.versions else CATALOGS.current).currency


def _decimal(option: str, text: str | None) -> Decimal | None:
    """An option's number, exactly as written (never through a float): 1.2 is Decimal('1.2'). Text that is no
    finite number is refused typed (InvalidRequest), naming the option."""
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        value = Decimal("NaN")
    if not value.is_finite() or not text.strip():
        raise InvalidRequest(f"{option} must be a decimal number (e.g. 1.2), got {text!r}")
    return value


def _time(option: str, text: str) -> datetime:
    """A day (2026-01-01: its midnight, UTC) or an ISO 8601 time with its offset (2026-01-01T09:00:00+01:00,
    ...Z). A time without an offset is refused: the CLI does not guess a time zone."""
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{option} must be a day (2026-01-01) or a time with its offset "
                             f"(2026-01-01T09:00:00Z), got {text!r}") from None
    if at.tzinfo is None:
        raise InvalidRequest(f"{option} {text!r} has no time zone: add Z or an offset (2026-01-01T09:00:00Z), "
                             "or give a day")
    return at


def _print_contract(org_id: str, sub: Subscription) -> None:
    if sub.contract is None:
        console.print(f"{org_id}: no contract (the plan's own terms), {sub.plan} on catalog v{sub.catalog_version}")
    else:
        console.print(f"{org_id}: contract {describe(sub.contract, _currency(sub.catalog_version))}")


@contract_cli.command("set")
def contract_set(
    org_id: str,
    term_start: Annotated[str, typer.Option(help="a day (2026-01-01, midnight UTC) or a time with its offset")],
    term_end: Annotated[str, typer.Option(help="the first moment past the term (2027-01-01)")],
    allowance_multiplier: Annotated[str | None, typer.Option(
        help="the plan's credits a period times this (1.2: 20% more); or --allowance-credits")] = None,
    allowance_credits: Annotated[str | None, typer.Option(help="an absolute allocation of credits a period")] = None,
    concurrency_multiplier: Annotated[str, typer.Option(help="the plan's open-hold limit times this")] = "1",
    seat_price_cents: Annotated[int | None, typer.Option(
        help="a negotiated price per seat and period (default: the catalog's)")] = None,
    overage: Annotated[bool, typer.Option("--overage", help="serve past the balance, invoiced at the next "
                                                            "renewal")] = False,
    overage_rate_cents: Annotated[str | None, typer.Option(help="with --overage: cents per credit (0.4)")] = None,
    overage_cap: Annotated[str | None, typer.Option(help="with --overage: at most this many credits of overage "
                                                         "(default: no cap)")] = None,
    payment_terms: Annotated[str, typer.Option(help="card (charged at once) or invoice")] = "card",
    net_days: Annotated[int, typer.Option(help="with --payment-terms invoice: days to pay")] = 0,
) -> None:
    """Set an organization's contract terms over its plan (replacing any): allowance and concurrency at once, a
    seat price from the next charge, overage at once. Refused whole, nothing changed, when a term is wrong."""
    async def go(b: BillingClient) -> Subscription:
        terms = ContractTerms(
            term_start=_time("--term-start", term_start), term_end=_time("--term-end", term_end),
            allowance_multiplier=_decimal("--allowance-multiplier", allowance_multiplier),
            allowance_credits=_decimal("--allowance-credits", allowance_credits),
            concurrency_multiplier=_decimal("--concurrency-multiplier", concurrency_multiplier) or Decimal(0),
            seat_price_cents=seat_price_cents, overage_allowed=overage,
            overage_cap=_decimal("--overage-cap", overage_cap),
            overage_rate_cents=_decimal("--overage-rate-cents", overage_rate_cents),
            payment_terms=payment_terms, net_days=net_days)  # type: ignore[arg-type]  # checked by the engine
        return await b.set_contract(org_id, terms)

    _print_contract(org_id, _run(go))


@contract_cli.command("show")
def contract_show(org_id: str) -> None:
    """Show an organization's contract terms (or that its plan's own apply)."""
    _print_contract(org_id, _run(lambda b: b.subscription(org_id)))


@contract_cli.command("end")
def contract_end(org_id: str) -> None:
    """End an organization's contract now: its plan's own terms apply again (overage already recorded is still
    invoiced at the next renewal, at the contract's rate)."""
    _print_contract(org_id, _run(lambda b: b.set_contract(org_id, None)))


@catalog_cli.command("migrate")
def catalog_migrate(
    org_id: str,
    version: Annotated[int | None, typer.Option(help="the catalog version (default: the current one)")] = None,
) -> None:
    """Move a grandfathered subscription to a catalog version: its next charge is priced on it. Refused while a
    contract locks its prices."""
    _show(_run(lambda b: b.migrate_catalog(org_id, version=version)))


@catalog_cli.command("show")
def catalog_show(
    version: Annotated[int | None, typer.Option(help="the catalog version (default: the current one)")] = None,
) -> None:
    """Show a catalog version: its plans (price per seat, annual discount, credits, concurrency), its packs and
    its price per credit (no database needed: the versions ship with the code)."""
    async def go() -> Catalog:
        return CATALOGS.current if version is None else CATALOGS.get(version)

    catalog: Catalog = _answer(go())
    newest = CATALOGS.current.version
    console.print(f"catalog v{catalog.version}" + (" (current)" if catalog.version == newest else
                                                   f" (current: v{newest})")
                  + f", prices in {catalog.currency}; versions known: "
                  + ", ".join(f"v{v}" for v in CATALOGS.versions))
    t = Table(title="plans")
    t.add_column("plan")
    for col in ("seat a month", "annual discount", "credits", "open holds"):
        t.add_column(col, justify="right")
    for plan in sorted(catalog.plans.values(), key=lambda p: p.rank):
        t.add_row(plan.name, str(Money(plan.price_cents_per_seat, catalog.currency)),
                  "" if plan.is_free else f"{plan.annual_discount_percent}%",
                  f"{number_text(plan.credits)}/{plan.credits_per}", str(plan.max_concurrent_holds))
    console.print(t)
    t = Table(title="packs")
    for col in ("pack", "credits", "price"):
        t.add_column(col, justify="right")
    for name, pack in sorted(catalog.packs.items(), key=lambda kv: kv[1].credits):
        t.add_row(name, number_text(pack.credits), str(Money(pack.price_cents, catalog.currency)))
    console.print(t)
    console.print(f"any amount of credits: {per_credit(catalog.credits.price_cents, catalog.currency)} each, "
                  f"at least {number_text(catalog.credits.minimum)} per purchase")


@cli.command("migrate")
def migrate_cmd() -> None:
    """Bring the database schema up to date: Alembic's migrations (tables), then the ledger's functions
    (ledger/sql/). Concurrent runs wait for each other (an advisory lock)."""
    async def go() -> str:
        settings = await _settings()
        assert settings.database_url is not None
        await asyncio.to_thread(apply_migrations, settings.database_url)
        return settings.database_url.split("@")[-1]

    console.print(f"migrated {_answer(go())}")


_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str) -> timedelta:
    """90s, 30m, 1h, 2d."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"a duration is a whole number and a unit (90s, 30m, 1h, 2d), got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@cli.command("audit")
def audit_cmd(
    json_output: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    pending_bound: Annotated[str, typer.Option(
        help="how long a payment may stay pending, and its grant and receipt may follow its success: "
             "90s, 30m, 1h, 2d")] = f"{int(DEFAULT_PENDING_BOUND.total_seconds() // 3600)}h",
    org: Annotated[list[str] | None, typer.Option("--org", help="audit only this organization (repeatable)")] = None,
    limit: Annotated[int, typer.Option(help="findings listed per check and kind (all are counted)")] = DEFAULT_LIMIT,
) -> None:
    """Prove the books (audit.py): every succeeded payment has one invoice, one grant and its receipt; no
    payment pending past the bound; the ledger's invariants; a running subscription for every paying
    organization (when Temporal is configured); open incidents listed. Exit status 0 when nothing is broken
    (open incidents are no broken books), 1 otherwise."""
    bound = _duration(pending_bound)

    async def go() -> AuditReport:
        settings = await _settings()
        assert settings.database_url is not None
        temporal = None
        if settings.temporal_address or settings.dev_mode:  # dev mode: the main command's dev server
            try:
                temporal = await connect_client(settings)
            except RuntimeError as err:
                raise ServiceUnavailable(f"Temporal cannot be reached: {err}") from None
        return await run_audit(settings.database_url, temporal=temporal, now=datetime.now(UTC), pending_bound=bound,
                               limit=limit, orgs=org)

    report: AuditReport = _answer(go())
    if json_output:
        typer.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        broken, incidents = (sum(getattr(c, n) for c in report.checks) for n in ("broken", "incidents"))
        typer.echo(f"audit at {report.now:%Y-%m-%d %H:%M:%S}Z: {len(report.checks)} checks, {broken} broken, "
                   f"{incidents} open incidents, {report.in_flight} payments in flight")
        for name, why in report.skipped.items():
            typer.echo(f"skipped {name}: {why}")
        for c in report.checks:
            for f in c.findings:
                typer.echo(f"{f.kind.upper():8} {f.check:12} {f.org_id or '-'}: {f.detail}")
            if c.truncated:
                typer.echo(f"         {c.name}: {len(c.findings)} of {c.broken + c.incidents} listed (--limit)")
        typer.echo("the books balance" if report.ok else "the books do NOT balance")
    raise typer.Exit(0 if report.ok else 1)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: BILLING_API_ADDRESS's host (127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="default: BILLING_API_ADDRESS's port (8480); 0: a free one")] = None,
) -> None:
    """Serve the HTTP API alone (docs/api.md) on the configured DATABASE_URL and TEMPORAL_ADDRESS, until Ctrl-C or
    SIGTERM. Workers run elsewhere (`python3 tasks.py run` in development). Outside development mode both must be
    set: nothing embedded starts because a variable is empty."""
    async def go() -> None:
        settings = await _settings()
        if not settings.temporal_address and not settings.dev_mode:
            raise ServiceUnavailable("TEMPORAL_ADDRESS is not set (BILLING_DEV_MODE=1 uses the development server "
                                     "that `python3 tasks.py run` starts)")
        default_host, default_port = settings.api_host_port()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with await BillingClient.connect(settings) as billing:
            app = create_app(billing)
            async with serving(app, host or default_host, default_port if port is None else port) as url:
                typer.echo(f"HTTP API: {url}/v1 (spec {url}/v1/openapi.json); Ctrl-C stops it")
                if settings.dev_mode:  # the development stack's platform key, as the main command prints it
                    secret = await first_platform_key(app.state.service.keys, settings.data_dir / "platform-key",
                                                      utcnow())
                    typer.echo(f"platform API key (kept in {settings.data_dir / 'platform-key'}): {secret}")
                await stop.wait()

    try:
        _answer(go())
    except (InvalidSetting, OSError) as exc:  # a bad BILLING_API_ADDRESS, a port taken
        console.print(f"[red]{type(exc).__name__}[/red]: {exc}")
        raise typer.Exit(2) from None


def _keys(work: Callable[[ApiKeys], Coroutine[Any, Any, Any]]) -> Any:
    return _run(lambda billing: work(ApiKeys(billing.ledger.pool)))


def _key_line(key: ApiKey) -> str:
    """One key on one line (ids are copied from it: never wrapped, unlike a table in a narrow terminal)."""
    revoked = f"  revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
    reach = key.org_id or "every organization"
    return (f"{key.id}  {key.role} of {reach}{' as ' + key.user_id if key.user_id else ''}  {key.prefix}...  "
            f"created {key.created_at:%Y-%m-%d %H:%M}{revoked}{'  ' + repr(key.name) if key.name else ''}")


@keys_cli.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="platform (every organization), admin (one) or member (one, one user)")],
    org: Annotated[str | None, typer.Option(help="the organization of an admin or member key")] = None,
    user: Annotated[str | None, typer.Option(help="the user of a member key")] = None,
    name: Annotated[str, typer.Option(help="to recognise it in a list")] = "",
) -> None:
    """Create an API key and print its secret, this once: only its hash is stored."""
    new: NewKey = _keys(lambda keys: keys.create(role=role, org_id=org, user_id=user, name=name, now=utcnow()))
    typer.echo(_key_line(new.key))
    typer.echo(f"secret (shown this once): {new.secret}")


@keys_cli.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option(help="only this organization's keys")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="revoked keys too")] = False,
) -> None:
    """List API keys, oldest first (never their secrets: only their first characters)."""
    found: list[ApiKey] = _keys(lambda keys: keys.list(org_id=org, include_revoked=revoked))
    for key in found:
        typer.echo(_key_line(key))
    if not found:
        typer.echo("no API keys" + (f" of {org}" if org else ""))


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (key_...), as `billing keys list` shows")],
                ) -> None:
    """Revoke an API key: every server refuses it within its key cache's lifetime (api/keys.py, 10 s)."""
    typer.echo(_key_line(_keys(lambda keys: keys.revoke(key_id, now=utcnow()))))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
