"""`billing contract set|show|end`, `billing catalog show|migrate` and `billing status` against the kit's database
and Temporal (the CLI configured as an operator's: DATABASE_URL, TEMPORAL_ADDRESS), run in this process with
typer's CliRunner: the terms reach the subscription exactly as written (decimals never through a float), bad
input is a clear refusal with exit status 2 that changes nothing, and a grandfathered subscription moves to a
newer catalog version.

The last test publishes a catalog version for its block (CATALOGS.published_for_test, which this process's CLI
and the kit's worker both read); the module's kit, with the subscription priced on it, goes with the module."""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from typer.testing import CliRunner, Result

from cli import cli
from models.catalog import CATALOG, CATALOGS
from models.contract_types import ContractTerms
from temporal_client import DEV_PAYLOAD_KEYS
from testkit import TASK_QUEUE, TestKit

EMAIL = "finance@cloro.test"
UNSET = ("DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "STRIPE_API_KEY", "SMTP_URL", "BILLING_DEV_MODE",
         "BILLING_PAYLOAD_KEYS", "BILLING_API_ADDRESS")


async def billing(kit: TestKit, *args: str) -> Result:
    """`billing *args` in this process (a thread: the command runs its own event loop), configured with the
    kit's database and Temporal, on a terminal wide enough that no line wraps."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET} | {
        "DATABASE_URL": kit.database_url, "TEMPORAL_ADDRESS": kit.env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": kit.env.client.namespace, "BILLING_TASK_QUEUE": TASK_QUEUE,
        "BILLING_PAYLOAD_KEYS": DEV_PAYLOAD_KEYS, "COLUMNS": "200"}
    return await asyncio.to_thread(lambda: CliRunner().invoke(cli, list(args), env=env))


_BOX = re.compile("[\u2500-\u257f]")  # a table's rules and borders


def text(output: str) -> str:
    """What was printed as one line of words: tables without their borders, whatever the console's width."""
    return " ".join(_BOX.sub(" ", output).split())


async def ok(kit: TestKit, *args: str) -> str:
    result = await billing(kit, *args)
    assert result.exit_code == 0, result.output
    return text(result.output)


async def refused(kit: TestKit, *args: str) -> str:
    result = await billing(kit, *args)
    assert result.exit_code == 2, result.output
    return text(result.output)


def day(at: datetime) -> str:
    return f"{at:%Y-%m-%d}"


async def test_a_contract_set_shown_and_ended_through_the_cli(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="enterprise", email=EMAIL)
    start = (kit.now() - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1)
    out = await ok(kit, "contract", "set", org, "--term-start", day(start), "--term-end", day(end),
                   "--allowance-multiplier", "1.2", "--concurrency-multiplier", "1.3", "--seat-price-cents", "18000",
                   "--overage", "--overage-rate-cents", "0.4", "--overage-cap", "20000.5")
    assert f"{org}: contract {day(start)} to {day(end)}; 1.2x credits; 1.3x concurrency; " \
           "seat EUR 180.00 a period; overage at 0.4 cents/credit (cap 20,000.5 credits); card" in out
    # Exactly the decimals written: 1.2, not 1.19999999999999995559 (a float's), and times in UTC.
    assert await kit.billing.contract(org) == ContractTerms(
        start.astimezone(UTC), end.astimezone(UTC), allowance_multiplier=Decimal("1.2"),
        concurrency_multiplier=Decimal("1.3"), seat_price_cents=18000, overage_allowed=True,
        overage_cap=Decimal("20000.5"), overage_rate_cents=Decimal("0.4"))
    bal = await kit.billing.balance(org)
    assert (bal.allocation, bal.concurrency_limit, bal.overage_cap) == (Decimal(48000), 130, Decimal("20000.5"))

    status = await ok(kit, "status", org)
    assert "enterprise" in status and "v1" in status and "1.2x credits" in status, status
    assert "1.2x credits" in await ok(kit, "contract", "show", org)

    # Replaced whole: an absolute allowance, times with their offsets, no overage.
    await ok(kit, "contract", "set", org, "--term-start", f"{day(start)}T01:00:00+01:00",
             "--term-end", f"{day(end)}T00:00:00Z", "--allowance-credits", "45000.25")
    terms = await kit.billing.contract(org)
    assert terms is not None
    assert (terms.term_start, terms.allowance_credits, terms.allowance_multiplier, terms.overage_allowed) == (
        start, Decimal("45000.25"), None, False)
    assert (await kit.billing.balance(org)).allocation == Decimal("45000.25")

    out = await ok(kit, "contract", "end", org)
    assert f"{org}: no contract (the plan's own terms), enterprise on catalog v1" in out
    assert await kit.billing.contract(org) is None
    assert "contract: none" in await ok(kit, "status", org)
    assert (await kit.billing.balance(org)).allocation == Decimal(40000)


async def test_bad_contract_input_is_refused_with_exit_2_and_changes_nothing(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    start, end = day(kit.now() - timedelta(days=1)), day(kit.now() + timedelta(days=365))
    term = ("--term-start", start, "--term-end", end)
    cases = [
        (("--allowance-multiplier", "1,2"), "--allowance-multiplier must be a decimal number (e.g. 1.2), got '1,2'"),
        (("--allowance-multiplier", "nan"), "--allowance-multiplier must be a decimal number"),
        (("--overage", "--overage-rate-cents", "0.4x"), "--overage-rate-cents must be a decimal number"),
        (("--allowance-multiplier", "1.2", "--allowance-credits", "5"), "not both"),
        (("--overage-rate-cents", "0.4"), "only with overage_allowed"),
        (("--overage",), "needs overage_rate_cents"),
        (("--overage", "--overage-rate-cents", "0.0000001"), "at most 6 decimal places"),
        (("--concurrency-multiplier", "0"), "concurrency_multiplier must be above 0"),
        (("--allowance-multiplier", "101"), "at most 100"),
        (("--seat-price-cents", "-1"), "seat_price_cents must be a whole number from 0"),
        (("--payment-terms", "cheque"), "payment_terms must be 'card' or 'invoice'"),
    ]
    for extra, message in cases:
        out = await refused(kit, "contract", "set", org, *term, *extra)
        assert out.startswith("InvalidRequest: ") and message in out, (extra, out)
    for bad_term, message in [
        (("--term-start", f"{start}T00:00:00", "--term-end", end), f"--term-start '{start}T00:00:00' has no time zone"),
        (("--term-start", "01/01/2026", "--term-end", end), "--term-start must be a day (2026-01-01) or a time"),
        (("--term-start", end, "--term-end", start), "ends after it starts"),
    ]:
        out = await refused(kit, "contract", "set", org, *bad_term)
        assert out.startswith("InvalidRequest: ") and message in out, (bad_term, out)
    # Typer's own refusals (a number that is no whole number, a missing option) exit 2 as well.
    out = await refused(kit, "contract", "set", org, *term, "--seat-price-cents", "75.5")
    assert "Invalid value for '--seat-price-cents'" in out, out
    assert "Missing option '--term-end'" in await refused(kit, "contract", "set", org, "--term-start", start)
    assert await kit.billing.contract(org) is None
    bal = await kit.billing.balance(org)
    assert (bal.allocation, bal.concurrency_limit, bal.overage_cap) == (Decimal(10000), 20, None)
    # Without a subscription: the engine's refusal, as typed.
    assert "InvalidRequest" in await refused(kit, "contract", "set", f"{org}-none", *term)


async def test_catalog_show_lists_a_version_s_prices(kit: TestKit) -> None:
    out = await ok(kit, "catalog", "show")
    assert f"catalog v{CATALOGS.current.version} (current), prices in EUR" in out
    # A plan's row: price per seat, annual discount, credits, open holds.
    assert "enterprise EUR 200.00 20% 40,000/month 100" in out, out
    assert "pro EUR 90.00 20% 10,000/month 20" in out
    assert "500 500 EUR 25.00" in out and "5000 5,000 EUR 175.00" in out
    assert "any amount of credits: EUR 0.20 each, at least 100 per purchase" in out
    assert "InvalidRequest: unknown catalog version 99; known versions: 1" in await refused(
        kit, "catalog", "show", "--version", "99")


async def test_invoice_terms_set_listed_open_and_marked_paid_through_the_cli(kit: TestKit, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="enterprise", seats=2, email=EMAIL)
    assert sub.period_end is not None
    start, end = day(kit.now() - timedelta(days=1)), day(kit.now() + timedelta(days=365))
    out = await ok(kit, "contract", "set", org, "--term-start", start, "--term-end", end,
                   "--payment-terms", "invoice", "--net-days", "7")
    assert out.endswith("; invoice, net 7 days"), out
    await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
    [invoice] = [i for i in await kit.billing.invoices(org) if i.purpose == "renewal"]
    due = day(sub.period_end + timedelta(days=7))
    assert f"{invoice.number} {day(invoice.issued_at)} renewal EUR 400.00 EUR 0.00 EUR 400.00 open, due {due}" \
        in await ok(kit, "invoices", org)
    assert "UnknownInvoice" in await refused(kit, "mark-paid", org, "INV-2099-000001")
    assert "UnknownInvoice" in await refused(kit, "pay-invoice", org, "INV-2099-000001")
    # This CLI has no Stripe configured: paying by card is refused typed, before any charge, and the invoice stays
    # open (tests/payments/test_open_invoices.py and tests/api pay by card for real).
    assert "ServiceUnavailable: Stripe is not configured" in await refused(kit, "pay-invoice", org, invoice.number)
    assert (await kit.billing.invoices(org))[-1].status == "open"
    out = await ok(kit, "mark-paid", org, invoice.number, "--reference", "transfer 4411")
    marked = (await kit.billing.invoices(org))[-1]
    # The CLI's clock is the wall clock (an operator's), not the kit's business time: read the date it stored.
    assert marked.status == "paid" and marked.paid_at is not None
    paid = day(marked.paid_at)
    assert out == f"{org}: invoice {invoice.number} paid {paid}, EUR 400.00", out
    assert await ok(kit, "mark-paid", org, invoice.number) == out  # a repeat: as the first
    assert f"EUR 400.00 paid {paid}" in await ok(kit, "invoices", org)


async def test_catalog_migrate_moves_a_grandfathered_subscription_and_a_contract_refuses_it(
    kit: TestKit, org: str
) -> None:
    old, locked = f"{org}-old", f"{org}-locked"
    sub = await kit.billing.subscribe(old, plan="pro", email=EMAIL)
    await kit.billing.subscribe(locked, plan="pro", email=EMAIL)
    await kit.billing.set_contract(locked, ContractTerms(kit.now() - timedelta(days=1),
                                                         kit.now() + timedelta(days=365)))
    assert sub.period_end is not None
    with CATALOGS.published_for_test(CATALOG.revised(version=2, plans={"pro": {"price_cents_per_seat": 9900}})):
        assert "pro EUR 99.00 20%" in await ok(kit, "catalog", "show")
        assert "pro EUR 90.00 20%" in await ok(kit, "catalog", "show", "--version", "1")
        assert "InvalidRequest: unknown catalog version 7" in await refused(kit, "catalog", "migrate", old,
                                                                           "--version", "7")
        out = await refused(kit, "catalog", "migrate", locked)
        assert "InvalidRequest" in out and (await kit.billing.subscription(locked)).catalog_version == 1, out
        assert " v1 " in await ok(kit, "status", old)
        out = await ok(kit, "catalog", "migrate", old)
        assert " v2 " in out, out
        assert (await kit.billing.subscription(old)).catalog_version == 2
        await kit.advance(sub.period_end + timedelta(minutes=1) - kit.now())
        assert [c.amount_cents for c in kit.charges(old) if c.purpose == "renewal"] == [9900]
        assert [c.amount_cents for c in kit.charges(locked) if c.purpose == "renewal"] == [9000]
