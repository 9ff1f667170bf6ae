"""The audit (audit.py): it passes on the books the engine makes, and it catches each way books can break,
injected by writing the database directly (as a bug would) in organizations of their own, removed again at
the end. Each injected case is found by its check, and nothing else in the database is flagged because of it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest

from audit import AuditReport, Link, link_of, pack_purchase_of, period_of, run_audit
from models.invoicing import invoice_number
from models.keys import pack_key, period_key, recharge_key, step_key, subscription_workflow_id
from models.ledger_types import GrantPack, StartPeriod
from temporal_client import DEV_PAYLOAD_KEY
from testkit import TestKit
from tests.reliability.conftest import assert_books_balance

ROOT = Path(__file__).resolve().parents[2]
EMAIL = "billing@acme.test"
AGO = timedelta(hours=2)          # injected rows are this old: past any bound the tests use
_years = itertools.count(2090)    # each injected invoice series numbers a year of its own (B2 keeps holding)


class Books:
    """Rows written directly into the books; every organization touched is removed at the end (`purge`)."""

    def __init__(self, kit: TestKit, conn: psycopg.AsyncConnection[Any]) -> None:
        self.kit, self.conn = kit, conn
        self.orgs: set[str] = set()
        self.years: set[int] = set()

    def at(self) -> datetime:
        return self.kit.now() - AGO

    async def payment(self, org: str, key: str, purpose: str, status: str = "succeeded", *, cents: int = 4500,
                      at: datetime | None = None, own: bool = True) -> None:
        """`own=False`: a row in an organization the engine made (not purged: the test removes the row)."""
        if own:
            self.orgs.add(org)
        at = at or self.at()
        await self.conn.execute(
            "INSERT INTO payments (key, org_id, purpose, amount_cents, currency, description, request, status, "
            "stripe_payment_intent, decline_code, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, 'EUR', 'injected', '{}'::jsonb, %s, %s, %s, %s, %s)",
            (key, org, purpose, cents, status, None if status == "pending" else f"pi_{key}",
             "card_declined" if status == "declined" else None, at, at))

    async def invoice(self, org: str, key: str, purpose: str, year: int, *, cents: int = 4500) -> None:
        self.orgs.add(org)
        self.years.add(year)
        cur = await self.conn.execute(
            "INSERT INTO invoice_counters AS c (year, last) VALUES (%s, 1) "
            "ON CONFLICT (year) DO UPDATE SET last = c.last + 1 RETURNING last", (year,))
        row = await cur.fetchone()
        assert row is not None
        await self.conn.execute(
            "INSERT INTO invoices (number, year, seq, org_id, payment_key, purpose, issued_at, currency, lines, "
            "subtotal_cents, tax_rate, tax_cents, total_cents, stripe_payment_id, html) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, 'EUR', '[]'::jsonb, %s, 0, 0, %s, %s, '')",
            (invoice_number(year, row[0]), year, row[0], org, key, purpose, self.at(), cents, cents, f"pi_{key}"))

    async def receipt(self, org: str, key: str, state: Literal["sent", "failed", "unsent"] = "sent") -> None:
        self.orgs.add(org)
        at = self.at()
        await self.conn.execute(
            "INSERT INTO outbox (key, org_id, template, to_addr, subject, text_body, html_body, created_at, sent_at, "
            "failed_at, error) VALUES (%s, %s, 'receipt', %s, 'injected', '', '', %s, %s, %s, %s)",
            (key, org, EMAIL, at, at if state == "sent" else None, at if state == "failed" else None,
             "550 mailbox refused" if state == "failed" else None))

    async def pack(self, org: str, name: str, *, year: int, grant: bool = True,
                   receipt: Literal["sent", "failed", "unsent", "none"] = "sent", invoice: bool = True) -> str:
        """A pack bought and paid (the payment, its invoice, its grant, its receipt), each part optional."""
        key = pack_key(org, name)
        await self.payment(org, key, "pack")
        if invoice:
            await self.invoice(org, key, "pack", year)
        if grant:
            await self.open_wallet(org)
            await self.kit.billing.ledger.grant_pack(GrantPack(org, key, Decimal(500), self.at()))
        if receipt != "none":
            await self.receipt(org, step_key(key, "receipt"), receipt)
        return key

    async def open_wallet(self, org: str) -> None:
        self.orgs.add(org)
        await self.kit.billing.open_wallet(org)

    async def purge(self) -> None:
        orgs = sorted(self.orgs)
        for table in ("ledger_entries", "usage_events", "user_usage", "holds", "alerts", "user_limits",
                      "usage_guards", "auto_recharge", "buckets", "wallet_ops", "wallets", "invoices", "payments",
                      "outbox", "billing_profiles"):
            await self.conn.execute(f"DELETE FROM {table} WHERE org_id = ANY(%s)", (orgs,))
        await self.conn.execute("DELETE FROM invoice_counters WHERE year = ANY(%s)", (sorted(self.years),))


@pytest.fixture
async def books(kit: TestKit) -> AsyncIterator[Books]:
    async with await psycopg.AsyncConnection.connect(kit.database_url, autocommit=True) as conn:
        b = Books(kit, conn)
        try:
            yield b
        finally:
            await b.purge()


Flags = set[tuple[str, str | None]]


async def flagged(kit: TestKit, set_aside: frozenset[str], **kwargs: Any) -> tuple[Flags, AuditReport]:
    """(check, organization) of every broken finding in the kit's whole database, and the report."""
    report = await kit.audit(exclude_orgs=set_aside, **kwargs)
    assert not any(c.truncated for c in report.checks), "more findings than listed: raise the limit"
    return {(f.check, f.org_id) for f in report.broken}, report


async def assert_only(kit: TestKit, set_aside: frozenset[str], before: Flags, expected: Flags,
                      **kwargs: Any) -> AuditReport:
    """The audit flags exactly `expected` beyond what it flagged `before` the injection."""
    after, report = await flagged(kit, set_aside, **kwargs)
    assert after - before == expected, [f for f in report.broken if (f.check, f.org_id) not in before]
    return report


# -- the links from a payment to its grant and receipt ---------------------------------------------------


@pytest.mark.parametrize("org", ["acme", "acme:eu", "a:b:c"])  # ':' in an id is escaped in keys
def test_a_payments_grant_and_receipt_follow_from_the_keys_the_workflows_build(org: str) -> None:
    start = datetime(2026, 3, 15, 9, 30, tzinfo=UTC)
    for purpose, word in [("subscription", "subscription"), ("renewal", "renewal"), ("retry", "retry-2")]:
        key = period_key(org, start, word)
        assert period_of(org, key) == start
        assert link_of(org, key, purpose) == Link("period", period_key(org, start, "credits"),
                                                  step_key(key, "receipt"))
    upgrade, seats = period_key(org, start, "upgrade-1"), period_key(org, start, "seats-2")
    assert link_of(org, upgrade, "upgrade") == Link("plan_change", upgrade, step_key(upgrade, "email"))
    assert link_of(org, seats, "seats") == Link("none", None, step_key(seats, "email"))
    for idem in ["p1", "x:y"]:
        pack = pack_key(org, idem)
        assert pack_purchase_of(org, pack) == idem
        assert link_of(org, pack, "pack") == Link("pack", pack, step_key(pack, "receipt"))
    recharge = recharge_key(org, start, 1)
    assert link_of(org, recharge, "auto_recharge") == Link("pack", recharge, step_key(recharge, "receipt"))
    # Keys of another organization, or not built by period_key, give no period: reported, never guessed.
    assert period_of(org, period_key(f"{org}x", start, "renewal")) is None
    assert period_of(org, f"{org}:{start.isoformat()}:renewal") is None
    assert link_of(org, f"{org}:2026-03-15:renewal", "renewal").problem is not None
    assert pack_purchase_of(org, pack_key(f"{org}x", "p1")) is None


# -- the books the engine makes ---------------------------------------------------------------------------


async def test_the_books_the_engine_makes_balance(kit: TestKit, org: str) -> None:
    monthly, annual, recharging = org, f"{org}-annual", f"{org}-recharge"
    await kit.billing.subscribe(monthly, plan="starter", seats=2, email=EMAIL)
    await kit.billing.upgrade(monthly, plan="pro")            # prorated: a charge and a plan change
    await kit.billing.change_seats(monthly, seats=3)          # prorated: a charge, no grant
    await kit.billing.buy_credits(monthly, pack="500", idempotency_key="p1")
    await kit.billing.subscribe(annual, plan="starter", interval="year", trial_days=7, email=EMAIL)
    await kit.billing.subscribe(recharging, plan="starter", email=EMAIL)
    await kit.billing.set_auto_recharge(recharging, threshold=Decimal(2900), pack="500")
    await kit.billing.debit(recharging, action="ai_chat", tier="fast", quantity=Decimal(200), idempotency_key="d1")
    await kit.settle()
    await kit.advance(timedelta(days=32))   # renewals; the annual trial ends and its first year is paid
    await assert_books_balance(kit)

    orgs = [monthly, annual, recharging]
    report = await kit.audit(orgs=orgs)
    assert report.findings == [] and report.in_flight == 0
    charges = [c for o in orgs for c in kit.charges(o)]
    assert {c.purpose for c in charges} == {"subscription", "upgrade", "seats", "pack", "renewal", "auto_recharge"}
    assert all(c.status == "succeeded" for c in charges)
    # Every payment was looked at, and every organization's workflow.
    assert report.check("grant").examined == report.check("receipt").examined == len(charges)
    assert report.check("subscription").examined == 3


async def test_a_dunning_retry_that_succeeds_balances(kit: TestKit, org: str) -> None:
    """The renewal declined, the retry a day later paid: the retry's grant is its period's credits."""
    first = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert first.period_end is not None
    await kit.use_card(org, "declined")
    await kit.advance(first.period_end + timedelta(minutes=1) - kit.now())
    await kit.use_card(org, "ok")
    await kit.advance(timedelta(days=1))
    assert [(c.purpose, c.status) for c in kit.charges(org)] == [
        ("subscription", "succeeded"), ("renewal", "declined"), ("retry", "succeeded")]
    await assert_books_balance(kit, allow_incidents=False)


async def test_a_crash_after_stripe_charged_a_pack_balances(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    key = pack_key(org, "crash")
    kit.payments.crash_after_stripe.add(key)  # the charge activity dies after Stripe confirmed; Temporal retries
    await kit.billing.buy_credits(org, pack="1000", idempotency_key="crash")
    assert key not in kit.payments.crash_after_stripe, "the crash did not fire"
    await assert_books_balance(kit, allow_incidents=False)


async def test_receipts_refused_for_good_are_recorded_as_failed_and_balance(kit: TestKit, org: str) -> None:
    email = f"{org.lower()}@gone.test"
    kit.sink.refuse.add(email)  # 550 for every message: each receipt is recorded as failed
    try:
        await kit.billing.subscribe(org, plan="pro", email=email)
        await kit.billing.buy_credits(org, pack="500", idempotency_key="p1")
        await kit.settle()
    finally:
        kit.sink.refuse.discard(email)
    async with await psycopg.AsyncConnection.connect(kit.database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM outbox WHERE org_id = %s AND failed_at IS NOT NULL", (org,))
        assert await cur.fetchone() == (2,)
    await assert_books_balance(kit, allow_incidents=False)


# -- each way to break the books, found by its check ------------------------------------------------------


async def test_a_succeeded_payment_without_its_invoice(kit: TestKit, books_set_aside: frozenset[str], books: Books,
                                                       org: str) -> None:
    before, _ = await flagged(kit, books_set_aside)
    await books.pack(org, "p1", year=next(_years), invoice=False)
    report = await assert_only(kit, books_set_aside, before, {("invoice", org)})
    [finding] = [f for f in report.broken if f.org_id == org]
    assert f"key={pack_key(org, 'p1')}" in finding.detail and "invoices=0" in finding.detail


async def test_an_invoice_without_a_succeeded_payment(kit: TestKit, books_set_aside: frozenset[str], books: Books,
                                                      org: str) -> None:
    before, _ = await flagged(kit, books_set_aside)
    key = pack_key(org, "p1")
    await books.payment(org, key, "pack", "declined")
    await books.invoice(org, key, "pack", next(_years))
    await assert_only(kit, books_set_aside, before, {("invoice_paid", org)})


async def test_a_payment_without_its_grant(kit: TestKit, books_set_aside: frozenset[str], books: Books,
                                           org: str) -> None:
    before, _ = await flagged(kit, books_set_aside)
    key = await books.pack(org, "p1", year=next(_years), grant=False)
    report = await assert_only(kit, books_set_aside, before, {("grant", org)})
    assert [f.detail for f in report.broken if f.org_id == org] == [
        f"pack payment {key}: no grant: a pack bucket under {key} is missing"]


async def test_a_payment_granted_twice(kit: TestKit, books_set_aside: frozenset[str], books: Books, org: str) -> None:
    before, _ = await flagged(kit, books_set_aside)
    key = await books.pack(org, "p1", year=next(_years))
    # A second grant entry under the payment's key, into a bucket of its own (the wallet kept in step, so the
    # ledger's own invariants still hold): credits given twice for one payment.
    cur = await books.conn.execute(
        "INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, created_at) "
        "VALUES (%s, 'extra', 'pack', 500000, 500000, %s) RETURNING id", (org, books.at()))
    row = await cur.fetchone()
    assert row is not None
    await books.conn.execute(
        "INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at) "
        "VALUES (%s, %s, 'grant', 500000, %s, %s)", (org, row[0], key, books.at()))
    await books.conn.execute("UPDATE wallets SET topup_remaining = topup_remaining + 500000 WHERE org_id = %s", (org,))
    report = await assert_only(kit, books_set_aside, before, {("grant", org), ("pack_paid", org)})
    assert f"pack payment {key}: granted 2 times under {key}" in [f.detail for f in report.broken]


async def test_a_period_paid_twice(kit: TestKit, books_set_aside: frozenset[str], books: Books, org: str) -> None:
    """A renewal and a dunning retry of one period both succeeded: two payments, one grant between them."""
    before, _ = await flagged(kit, books_set_aside)
    start = (kit.now() - timedelta(days=3)).replace(microsecond=0)
    year = next(_years)
    keys = [period_key(org, start, "renewal"), period_key(org, start, "retry-1")]
    for key, purpose in zip(keys, ["renewal", "retry"], strict=True):
        await books.payment(org, key, purpose)
        await books.invoice(org, key, purpose, year)
        await books.receipt(org, step_key(key, "receipt"))
    credits = period_key(org, start, "credits")
    await kit.billing.ledger.start_period(StartPeriod(org, credits, "pro", start, start + timedelta(days=31), start))
    report = await assert_only(kit, books_set_aside, before, {("grant", org)})
    assert [f.detail for f in report.broken if f.org_id == org] == [
        f"retry payment {keys[1]}: its period was paid already by {keys[0]}: both claim the one grant {credits}"]


@pytest.mark.parametrize("state", ["unsent", "none"])
async def test_a_receipt_neither_sent_nor_recorded_as_failed(kit: TestKit, books_set_aside: frozenset[str],
                                                             books: Books, org: str, state: Literal["unsent", "none"]
                                                             ) -> None:
    before, _ = await flagged(kit, books_set_aside)
    key = await books.pack(org, "p1", year=next(_years), receipt=state)
    # Another organization's receipt was refused for good and recorded as failed: accounted for.
    await books.pack(f"{org}-failed", "p1", year=next(_years), receipt="failed")
    report = await assert_only(kit, books_set_aside, before, {("receipt", org)})
    [detail] = [f.detail for f in report.broken if f.org_id == org]
    assert step_key(key, "receipt") in detail and ("neither sent nor failed" if state == "unsent" else "no receipt") \
        in detail


async def test_a_payment_pending_past_the_bound(kit: TestKit, books_set_aside: frozenset[str], books: Books,
                                                org: str) -> None:
    bound = timedelta(hours=1)
    before, _ = await flagged(kit, books_set_aside, pending_bound=bound)
    late, recent = pack_key(org, "late"), pack_key(org, "recent")
    await books.payment(org, late, "pack", "pending", at=kit.now() - AGO)
    await books.payment(org, recent, "pack", "pending", at=kit.now() - timedelta(minutes=10))  # within the bound
    report = await assert_only(kit, books_set_aside, before, {("pending", org)}, pending_bound=bound)
    [detail] = [f.detail for f in report.broken if f.org_id == org]
    assert detail.startswith(f"pack payment {late} pending since")
    # With no bound, the recent one is late too.
    report = await kit.audit(orgs=[org])
    assert report.check("pending").broken == 2


async def test_a_broken_ledger_invariant(kit: TestKit, books_set_aside: frozenset[str], books: Books,
                                         org: str) -> None:
    before, _ = await flagged(kit, books_set_aside)
    await books.open_wallet(org)  # the free plan: today's 50 credits in a live plan bucket
    # One credit more on the wallet than its bucket's entries hold.
    await books.conn.execute("UPDATE wallets SET plan_remaining = plan_remaining + 1000 WHERE org_id = %s", (org,))
    await assert_only(kit, books_set_aside, before, {("I1", org)})


async def test_a_paying_organization_without_a_running_subscription(
        kit: TestKit, books_set_aside: frozenset[str], books: Books, org: str) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await kit.settle()
    before, _ = await flagged(kit, books_set_aside)
    handle = kit.env.client.get_workflow_handle(subscription_workflow_id(org))
    await handle.terminate(reason="the audit's test: a subscription gone")
    try:
        report = await assert_only(kit, books_set_aside, before, {("subscription", org)})
        assert [f.detail for f in report.broken if f.org_id == org] == [
            f"paying, but no running Subscription workflow {subscription_workflow_id(org)} (TERMINATED)"]
        # Without a Temporal client the check is reported as skipped, never as passed.
        alone = await run_audit(kit.database_url, temporal=None, now=kit.now(), pending_bound=timedelta(0),
                                orgs=[org])
        assert alone.ok and set(alone.skipped) == {"subscription", "incident", "B2"}
    finally:
        # Its books are whole (charged, invoiced, granted, receipted): it leaves the paying organizations by
        # losing its billing profile, so the audits after this test do not see it. And the kit stops waiting
        # for it: a terminated workflow's last state is never settled once its renewal is due.
        await books.conn.execute("DELETE FROM billing_profiles WHERE org_id = %s", (org,))
        kit.billing.known_orgs.discard(org)


async def test_an_open_incident_is_listed_apart_from_broken_books(
        kit: TestKit, books_set_aside: frozenset[str], books: Books, org: str) -> None:
    sub = await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    assert sub.period_end is not None
    renewal = period_key(org, sub.period_end, "renewal")
    kit.payments.refuse_charges.add(renewal)  # Stripe refuses the renewal for good: an incident, retried
    try:
        await kit.advance(sub.period_end + timedelta(seconds=30) - kit.now())
        report = await kit.audit(orgs=[org])
        assert report.ok and report.broken == []
        [incident] = report.incidents
        assert (incident.check, incident.org_id) == ("incident", org)
        assert incident.detail.startswith(f"{subscription_workflow_id(org)}: renewal failed (attempt 1")
        await assert_books_balance(kit)  # an incident is no broken book...
        with pytest.raises(AssertionError, match=f"(?s)open incidents.*incident {re.escape(org)}: "):
            await assert_books_balance(kit, allow_incidents=False)  # ...unless the test says so
        # A payment the open incident is retrying (its latest period payment, pending) is the incident's, not
        # broken; the same pending payment of an organization without an incident is broken.
        await books.payment(org, renewal, "renewal", "pending", own=False)
        try:
            calm = f"{org}-calm"
            await books.payment(calm, period_key(calm, sub.period_end, "renewal"), "renewal", "pending")
            report = await kit.audit(orgs=[org, calm])
            pending = report.check("pending")
            assert [(f.org_id, f.kind) for f in pending.findings] == [(org, "incident"), (calm, "broken")]
        finally:
            await books.conn.execute("DELETE FROM payments WHERE key = %s", (renewal,))
    finally:
        kit.payments.refuse_charges.discard(renewal)
    done = await kit.billing.retry_now(org)
    assert done.incident is None and done.renewals == 1
    assert (await kit.audit(orgs=[org])).findings == []


# -- `billing audit` ------------------------------------------------------------------------------------


async def billing_audit(kit: TestKit, *args: str, temporal: bool = True) -> tuple[int, str]:
    """`billing audit ARGS` in a process of its own, configured as an operator would: DATABASE_URL, and
    TEMPORAL_ADDRESS when `temporal`. Returns (exit status, stdout)."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "BILLING_DEV_MODE",
                        "BILLING_PAYLOAD_KEYS"}}
    env["DATABASE_URL"] = kit.database_url
    if temporal:
        env["TEMPORAL_ADDRESS"] = kit.env.client.service_client.config.target_host
        env["TEMPORAL_NAMESPACE"] = kit.env.client.namespace
        env["BILLING_PAYLOAD_KEYS"] = base64.b64encode(DEV_PAYLOAD_KEY).decode()  # the kit's key
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "cli.py"), "audit", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None
    assert proc.returncode in (0, 1), out.decode() + err.decode()
    return proc.returncode, out.decode()


async def test_billing_audit_exits_0_on_balanced_books_and_1_on_broken_ones(
        kit: TestKit, books: Books, org: str) -> None:
    await kit.billing.subscribe(org, plan="starter", email=EMAIL)
    await kit.settle()
    status, out = await billing_audit(kit, "--org", org, "--json")
    assert status == 0, out
    report = json.loads(out)
    assert report["ok"] is True and report["broken"] == 0
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["subscription"]["examined"] == 1 and checks["subscription"]["skipped"] is None
    assert checks["B2"]["skipped"] is not None  # per year: left out of an audit of some organizations

    broken = f"{org}-broken"
    await books.pack(broken, "p1", year=next(_years), invoice=False)
    status, out = await billing_audit(kit, "--org", org, "--org", broken, "--json", "--pending-bound", "30m")
    assert status == 1, out
    report = json.loads(out)
    assert report["pending_bound_seconds"] == 1800 and report["broken"] == 1
    [finding] = [f for c in report["checks"] for f in c["findings"]]
    assert (finding["check"], finding["org_id"], finding["kind"]) == ("invoice", broken, "broken")

    status, out = await billing_audit(kit, "--org", broken, temporal=False)
    assert status == 1
    assert f"BROKEN   invoice      {broken}: " in out and "skipped subscription: no Temporal client given" in out
    assert out.rstrip().endswith("the books do NOT balance")
