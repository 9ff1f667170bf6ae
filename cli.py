"""The `billing` command: the CLI over BillingClient, and the operator's steps (`billing migrate`).

    billing migrate                      # bring the schema up to date (tables, then the ledger's functions)
    billing subscribe acme --plan pro --email ops@acme.test
    billing balance acme
    billing serve --port 8480            # the HTTP API alone (docs/api.md), beside workers running elsewhere
    billing keys create --role admin --org acme

With DATABASE_URL unset and BILLING_DEV_MODE=1, it uses the embedded development PostgreSQL under .data/
(the one the main command, `python3 tasks.py run`, starts and migrates): the `embedded` extra. Outside
development mode an unset DATABASE_URL is refused: nothing embedded starts because a variable is empty.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
import uvloop
from rich.console import Console
from rich.table import Table

from api.app import create_app
from api.keys import ApiKeys, first_platform_key
from api.server import serving
from audit import DEFAULT_LIMIT, DEFAULT_PENDING_BOUND, AuditReport, run_audit
from ledger.migrate import migrate as apply_migrations
from models.api_types import ApiKey, NewKey
from models.auto_recharge_types import AutoRechargeSettings
from models.checks import utcnow
from models.errors import BillingError, InvalidRequest, ServiceUnavailable
from models.money import Money
from models.subscription_types import Subscription
from settings import InvalidSetting, Settings
from starter import BillingClient
from temporal_client import connect_client

cli = typer.Typer(help="Billing engine: subscriptions, metering, balances, invoices.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys of the HTTP API (`billing serve`): create, list, revoke.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
console = Console()


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


def _run(coro_fn: Callable[[BillingClient], Any]) -> Any:
    async def go() -> Any:
        async with _client() as billing:
            return await coro_fn(billing)

    return _answer(go())


def _answer(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro`; a BillingError is printed as the typed refusal it is (exit status 2)."""
    try:
        return uvloop.run(coro)
    except BillingError as exc:
        console.print(f"[red]{type(exc).__name__}[/red]: {exc.message}")
        raise typer.Exit(2) from None


def _show(sub: Subscription) -> None:
    t = Table(title=f"{sub.org_id}: subscription")
    for col in ("plan", "seats", "interval", "status", "period", "at period end"):
        t.add_column(col)
    pending = [p for p in (sub.pending_plan and f"downgrade to {sub.pending_plan}",
                           sub.pending_seats and f"{sub.pending_seats} seats",
                           sub.cancel_at_period_end and "cancel to Free") if p]
    period = "" if sub.period_start is None else f"{sub.period_start:%Y-%m-%d} to {sub.period_end:%Y-%m-%d}"
    if sub.status == "trialing":
        period += f" (trial ends {sub.trial_end:%Y-%m-%d})"
    t.add_row(sub.plan, str(sub.seats), sub.interval, sub.status, period, ", ".join(pending))
    console.print(t)
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
    """Show an organization's subscription (and its open incident, if a step failed for good)."""
    _show(_run(lambda b: b.subscription(org_id)))


@cli.command()
def retry(org_id: str) -> None:
    """Run a subscription's failed step again now, instead of at its next backoff."""
    _show(_run(lambda b: b.retry_now(org_id)))


@cli.command()
def invoices(org_id: str) -> None:
    """List an organization's invoices."""
    rows = _run(lambda b: b.invoices(org_id))
    t = Table(title=f"{org_id} invoices")
    for col in ("number", "date", "purpose", "subtotal", "tax", "total", "payment"):
        t.add_column(col)
    for i in rows:
        t.add_row(i.number, f"{i.issued_at:%Y-%m-%d}", i.purpose, str(Money(i.subtotal_cents, i.currency)),
                  str(Money(i.tax_cents, i.currency)), str(Money(i.total_cents, i.currency)), i.stripe_payment_id)
    console.print(t)


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
) -> None:
    """Charge one action now."""
    r = _run(lambda b: b.debit(org_id, action=action, idempotency_key=key, tier=tier,
                               quantity=Decimal(quantity), user_id=user, country=country))
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


@cli.command()
def usage(org_id: str, by: Annotated[str, typer.Option(help="action, tier or user")] = "action") -> None:
    """Usage grouped by action, tier or user."""
    rows = _run(lambda c: c.usage(org_id, by=by))  # type: ignore[arg-type]
    t = Table(title=f"{org_id} usage by {by}")
    for col in (by, "uses", "quantity", "credits"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r.key), str(r.uses), str(r.quantity), str(r.credits))
    console.print(t)


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
