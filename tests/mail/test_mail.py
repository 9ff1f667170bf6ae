"""Emails: every template renders strictly, the outbox sends each key at most once over real SMTP (the
aiosmtpd sink), and the ledger's alerts become emails once. Real PostgreSQL, real SMTP: no mocks."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities
from ledger import Ledger
from ledger.pool import LeanPool
from mail.alerts import AlertSender
from mail.mailer import EmailTemplates, Mailer, SmtpTarget, message_id
from models.billing_types import EmailResult, SendEmail
from models.errors import UsageGuardPaused
from models.ledger_types import StartPeriod
from models.money import Money
from stack.mail import SmtpSink, free_port, parse_email
from tests.conftest import T0, OrgFactory

Context = dict[str, str | int | bool | None]

# Each template's context keys (docs/product.md, "Emails"), with values as the workflows format them.
CONTEXTS: dict[str, Context] = {
    "webhook_disabled": {"endpoint_id": "whe_0123456789abcdef", "url": "https://example.com/hooks",
                         "failing_since": "2026-01-15T12:00:00Z", "attempts": 84, "error": "HTTP 503",
                         "disabled_at": "2026-01-18T12:30:00Z"},
    "trial_started": {"plan": "pro", "seats": 3, "trial_end": "2026-01-29"},
    "trial_ending": {"plan": "pro", "trial_end": "2026-01-29", "amount": str(Money(27000))},
    "receipt": {"plan": "pro", "seats": 3, "amount": str(Money(27000)), "invoice_number": "INV-2026-000042",
                "period_start": "2026-01-15", "period_end": "2026-02-15"},
    "payment_failed": {"plan": "pro", "amount": str(Money(27000)), "next_retry": "2026-02-16"},
    "invoice_issued": {"plan": "enterprise", "seats": 2, "amount": str(Money(40000)),
                       "invoice_number": "INV-2026-000045", "due": "2026-02-22", "period_start": "2026-02-15",
                       "period_end": "2026-03-15"},
    "invoice_due": {"plan": "enterprise", "invoice_number": "INV-2026-000045", "amount": str(Money(40000)),
                    "due": "2026-02-22", "next_reminder": "2026-02-23"},
    "invoice_overdue": {"plan": "enterprise", "invoice_number": "INV-2026-000045", "amount": str(Money(40000)),
                        "due": "2026-02-22", "next_reminder": "2026-02-27", "final": True},
    "reverted_to_free": {"plan": "pro", "reason": "the last payment retry failed"},
    "upgrade_confirmed": {"old_plan": "starter", "plan": "pro", "seats": 3, "amount": str(Money(8710)),
                          "invoice_number": "INV-2026-000043"},
    "downgrade_scheduled": {"plan": "pro", "new_plan": "starter", "effective": "2026-02-15"},
    "seats_changed": {"plan": "pro", "old_seats": 3, "seats": 5, "amount": str(Money(11613)),
                      "effective": "2026-01-20"},
    "cancellation_scheduled": {"plan": "pro", "effective": "2026-02-15"},
    "resumed": {"plan": "pro", "period_end": "2026-02-15"},
    "usage_80": {"allocation": "3,000", "consumed": "2,405", "percent": 80},
    "credits_exhausted": {"allocation": "3,000"},
    "low_balance": {"available": "95.5", "threshold": "100"},
    "usage_guard_paused": {"action": "ai_chat", "detail": "it went past its limit of 500 uses per hour"},
    "quota_80": {"quota": "sessions", "used": "4,000", "limit": "5,000", "percent": 80, "hard": False,
                 "plan": "starter"},
    "quota_100": {"quota": "enrichments", "used": "500", "limit": "500", "percent": 100, "hard": True,
                  "plan": "starter"},
    "runway": {"projected": "3,500", "allocation": "3,000", "consumed": "700", "percent": 23,
               "period_end": "2026-02-15"},
    "pack_receipt": {"pack": "1000", "credits": "1,000", "amount": str(Money(4500)),
                     "invoice_number": "INV-2026-000044"},
    "auto_recharge_receipt": {"packs": 2, "credits": "1,000", "amount": str(Money(5000)),
                              "invoice_number": "INV-2026-000045"},
    "auto_recharge_limit": {"limit": str(Money(5000)), "spent": str(Money(5000))},
    "auto_recharge_failed": {"amount": str(Money(2500)), "attempt": 2, "final": False},
}
SUBJECTS = {  # the ones docs/product.md spells out
    "trial_started": "Your pro trial has started",
    "trial_ending": "Your trial ends in 3 days",
    "receipt": "Receipt INV-2026-000042: EUR 270.00",
    "payment_failed": "Payment failed",
    "reverted_to_free": "Your organization is now on the Free plan",
    "usage_80": "80% of your plan credits used",
    "credits_exhausted": "Your plan credits are used up",
    "low_balance": "Low credit balance",
    "usage_guard_paused": "ai_chat paused: unusual usage",
    "quota_80": "80% of your sessions quota used",
    "quota_100": "Your enrichments quota is reached",
    "runway": "Your plan credits are projected to run out this period",
    "auto_recharge_limit": "Auto-recharge paused: spending limit reached",
}
TEMPLATES = EmailTemplates()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def request(template: str = "receipt", *, key: str | None = None, org: str | None = None,
            context: Context | None = None, to: str = "billing@acme.test") -> SendEmail:
    return SendEmail(org_id=org or uid("org"), key=key or uid("key"), template=template, to=to, now=T0,
                     context=CONTEXTS[template] if context is None else context)


@pytest.fixture
async def mailer(database_url: str, sink: SmtpSink) -> AsyncIterator[Mailer]:
    m = await Mailer.open(database_url, sink.url, pool_size=3)
    yield m
    await m.close()


async def outbox_row(url: str, key: str) -> tuple[Any, ...] | None:
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT subject, text_body, html_body, sent_at FROM outbox WHERE key = %s", (key,))
        return await cur.fetchone()


# -- templates ---------------------------------------------------------------------------------------


def test_the_templates_on_disk_are_the_listed_ones() -> None:
    assert TEMPLATES.names() == sorted(CONTEXTS)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_every_template_renders_subject_text_and_html(name: str) -> None:
    r = TEMPLATES.render(name, {**CONTEXTS[name], "org_id": "acme-42"})
    assert r.subject and "\n" not in r.subject
    if name in SUBJECTS:
        assert r.subject == SUBJECTS[name]
    assert r.html.lstrip().startswith("<!doctype html>") and "<h1 style" in r.html and r.subject in r.html
    assert "acme-42" in r.text and "acme-42" in r.html
    for key, value in CONTEXTS[name].items():  # each value shows in both bodies: no key is ignored
        if isinstance(value, str | int) and not isinstance(value, bool):
            assert str(value) in r.text, (key, r.text)
            assert str(value) in r.html, (key, r.html)
    assert "{{" not in r.text + r.html and "None" not in r.text + r.html


@pytest.mark.parametrize(("name", "key"), [(n, k) for n in sorted(CONTEXTS) for k in CONTEXTS[n]])
def test_a_missing_context_key_fails_loudly(name: str, key: str) -> None:
    context = {k: v for k, v in CONTEXTS[name].items() if k != key}
    with pytest.raises(ApplicationError) as err:
        TEMPLATES.render(name, {**context, "org_id": "acme"})
    assert err.value.type == "InvalidRequest" and err.value.non_retryable
    assert repr(key) in str(err.value)


def test_optional_values_read_plainly() -> None:
    last = TEMPLATES.render("payment_failed", {**CONTEXTS["payment_failed"], "next_retry": None, "org_id": "a"})
    assert "last attempt" in last.text and "try again" not in last.text
    retry = TEMPLATES.render("payment_failed", {**CONTEXTS["payment_failed"], "org_id": "a"})
    assert "try again on 2026-02-16" in retry.text
    at_renewal = TEMPLATES.render("seats_changed", {**CONTEXTS["seats_changed"], "amount": None, "org_id": "a"})
    assert "Nothing is charged now" in at_renewal.text
    final = TEMPLATES.render("auto_recharge_failed", {**CONTEXTS["auto_recharge_failed"], "final": True,
                                                      "org_id": "a"})
    assert final.subject == "Auto-recharge disabled: payment failed" and "now disabled" in final.text


@pytest.mark.parametrize("name", ["pack_receipt", "auto_recharge_receipt"])
def test_an_amount_of_credits_reads_as_credits_not_as_a_pack(name: str) -> None:
    # Any-amount purchases (seed 004) have no pack: the receipt names the credits, never "None" or a pack.
    context = {**CONTEXTS[name], "pack": None, "packs": 1, "credits": "250", "amount": str(Money(5000)),
               "org_id": "a"}
    r = TEMPLATES.render(name, context)
    for body in (r.text, r.html):
        assert "250" in body and "EUR 50.00" in body and "INV-2026-0000" in body
        assert "None" not in body and "pack" not in body.replace("packs", "").lower(), body
    assert "250 credits" in r.subject and "EUR 50.00" in r.subject
    if name == "pack_receipt":
        assert "we charged EUR 50.00 for 250 credits" in r.text


def test_html_is_escaped_and_text_is_not() -> None:
    r = TEMPLATES.render("reverted_to_free", {"plan": "<b>pro</b>", "reason": "a & b", "org_id": "o"})
    assert "&lt;b&gt;pro&lt;/b&gt;" in r.html and "<b>pro</b>" not in r.html and "a &amp; b" in r.html
    assert "<b>pro</b>" in r.text and "a & b" in r.text


def test_smtp_urls_parse() -> None:
    t = SmtpTarget.parse("smtp://127.0.0.1:2525")
    assert (t.host, t.port, t.tls, t.starttls, t.user, t.sender) == ("127.0.0.1", 2525, False, False, None, None)
    t = SmtpTarget.parse("smtps://me%40x.io:p%3Ass@mail.x.io?from=billing%40x.io")
    assert (t.port, t.tls, t.user, t.password, t.sender) == (465, True, "me@x.io", "p:ss", "billing@x.io")
    t = SmtpTarget.parse("smtp://mail.x.io:587?starttls=true")
    assert (t.port, t.tls, t.starttls) == (587, False, True)
    with pytest.raises(ValueError, match="SMTP_URL"):
        SmtpTarget.parse("http://mail.x.io")


# -- sending, at most once ----------------------------------------------------------------------------


async def test_a_key_is_sent_once(mailer: Mailer, sink: SmtpSink, database_url: str) -> None:
    req = request("receipt")
    assert await mailer.send(req) == EmailResult(req.key, sent=True)
    assert await mailer.send(req) == EmailResult(req.key, sent=False)
    got = sink.messages(req.org_id)
    assert len(got) == 1
    m = got[0]
    assert (m.to, m.template, m.org_id, m.key) == ("billing@acme.test", "receipt", req.org_id, req.key)
    assert m.subject == "Receipt INV-2026-000042: EUR 270.00"
    assert "EUR 270.00" in m.text and "<strong>EUR 270.00</strong>" in m.html
    assert m.message_id == message_id(req.key, "localhost")
    # The .eml on disk is the message as received.
    assert m.path.parent == sink.maildir and parse_email(m.path.read_bytes(), m.path) == m
    row = await outbox_row(database_url, req.key)
    assert row is not None and row[0] == m.subject and row[3] == T0


async def test_the_activity_sends_once_too(mailer: Mailer, sink: SmtpSink) -> None:
    acts = EmailActivities(mailer)
    assert [getattr(f, "__temporal_activity_definition").name for f in acts.all()] == ["email.send"]
    req = request("trial_started")
    env = ActivityEnvironment()
    assert (await env.run(acts.send, req)).sent and not (await env.run(acts.send, req)).sent
    assert [m.subject for m in sink.messages(req.org_id)] == ["Your pro trial has started"]


async def test_concurrent_attempts_send_once(mailer: Mailer, sink: SmtpSink) -> None:
    req = request("low_balance")
    results = await asyncio.gather(*(mailer.send(req) for _ in range(3)), return_exceptions=True)
    for r in results:  # an attempt that met another mid-send backs off, retryable
        if isinstance(r, BaseException):
            assert isinstance(r, ApplicationError) and r.type == "EmailInFlight" and not r.non_retryable
    retried = [await mailer.send(req) if isinstance(r, BaseException) else r for r in results]
    assert sorted(r.sent for r in retried) == [False, False, True]
    assert len(sink.messages(req.org_id)) == 1


class CrashAfterSmtp(Mailer):
    """Dies once right after the SMTP server accepted the message, before the outbox stamp commits
    (as a worker killed at that instant would)."""

    crashes = 1

    async def _stamp(self, conn: AsyncConnection[Any], key: str, at: datetime) -> None:
        if self.crashes:
            self.crashes -= 1
            raise ConnectionError("worker lost after the SMTP send")
        await super()._stamp(conn, key, at)


async def test_a_crash_between_smtp_and_the_stamp_resends_with_the_same_message_id(
    database_url: str, sink: SmtpSink
) -> None:
    """The documented window: the retry cannot know the server got the first copy, so it sends again,
    the same bytes with the same Message-ID (receivers that dedupe by Message-ID show one). Outside this
    window (the usual retry after the stamp), nothing is resent."""
    m = await CrashAfterSmtp.open(database_url, sink.url)
    try:
        req = request("payment_failed")
        with pytest.raises(ConnectionError):
            await m.send(req)
        row = await outbox_row(database_url, req.key)
        assert row is not None and row[3] is None  # rendered and stored, not stamped
        assert len(sink.messages(req.org_id)) == 1
        assert (await m.send(req)).sent  # Temporal's retry
        assert not (await m.send(req)).sent
        first, second = sink.messages(req.org_id)
        assert first.message_id == second.message_id == message_id(req.key, "localhost")
        assert (first.subject, first.text, first.html) == (second.subject, second.text, second.html)
        assert first.path.read_bytes() == second.path.read_bytes()
    finally:
        await m.close()


async def test_an_unsent_row_is_resent_from_its_stored_rendering(
    mailer: Mailer, sink: SmtpSink, database_url: str
) -> None:
    req = request("receipt", context={})  # this context could not render: proof nothing is re-rendered
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO outbox (key, org_id, template, to_addr, subject, text_body, html_body, created_at) "
            "VALUES (%s, %s, 'receipt', %s, 'Stored subject', 'stored text', '<p>stored html</p>', %s)",
            (req.key, req.org_id, req.to, T0 - timedelta(days=1)))
    assert (await mailer.send(req)).sent
    [m] = sink.messages(req.org_id)
    assert (m.subject, m.text.strip(), m.html.strip()) == ("Stored subject", "stored text", "<p>stored html</p>")
    row = await outbox_row(database_url, req.key)
    assert row is not None and row[3] == T0


async def test_the_outbox_refuses_a_second_stamp(mailer: Mailer, database_url: str) -> None:
    req = request("resumed")
    await mailer.send(req)
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="already sent"):
            await conn.execute("UPDATE outbox SET sent_at = now() WHERE key = %s", (req.key,))


async def test_bad_requests_are_not_retried_and_store_nothing(mailer: Mailer, database_url: str) -> None:
    for req in (request("receipt", context={}), request("receipt", to="not an address"),
                SendEmail(org_id="o", key=uid("key"), template="no_such_email", to="a@b.test", now=T0)):
        with pytest.raises(ApplicationError) as err:
            await mailer.send(req)
        assert err.value.type == "InvalidRequest" and err.value.non_retryable
        assert await outbox_row(database_url, req.key) is None
    with pytest.raises(ApplicationError, match=r"unknown email template '\.\./receipt'"):
        await mailer.send(replace(request("receipt"), template="../receipt"))


async def test_the_same_key_for_another_email_is_a_conflict(mailer: Mailer, sink: SmtpSink) -> None:
    req = request("resumed")
    await mailer.send(req)
    other = SendEmail(org_id=req.org_id, key=req.key, template="trial_started", to=req.to, now=T0,
                      context=CONTEXTS["trial_started"])
    with pytest.raises(ApplicationError) as err:
        await mailer.send(other)
    assert err.value.type == "IdempotencyConflict" and err.value.non_retryable
    assert len(sink.messages(req.org_id)) == 1


async def test_a_mailbox_refused_for_good_is_recorded_as_failed_not_raised(mailer: Mailer, sink: SmtpSink,
                                                                            database_url: str) -> None:
    req = request("receipt", to="gone@acme.test")
    sink.refuse.add(req.to)
    first = await mailer.send(req)
    assert (first.sent, "550" in (first.failed or "")) == (False, True)
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT sent_at, failed_at, error FROM outbox WHERE key = %s", (req.key,))
        sent_at, failed_at, error = await cur.fetchone() or (None, None, None)
    assert (sent_at, failed_at, error) == (None, T0, first.failed)  # where operators find it
    sink.refuse.clear()
    again = await mailer.send(req)  # a retry of the step: recorded, never retried against the server
    assert (again.sent, again.failed) == (False, first.failed)
    assert sink.messages(req.org_id) == []


async def test_smtp_down_propagates_and_the_retry_sends(database_url: str, sink: SmtpSink) -> None:
    down = await Mailer.open(database_url, f"smtp://127.0.0.1:{free_port()}", timeout=5)
    req = request("trial_ending")
    try:
        with pytest.raises(OSError):
            await down.send(req)  # retryable: Temporal tries again
    finally:
        await down.close()
    row = await outbox_row(database_url, req.key)
    assert row is not None and row[3] is None
    up = await Mailer.open(database_url, sink.url)
    try:
        assert (await up.send(req)).sent
    finally:
        await up.close()
    assert [m.subject for m in sink.messages(req.org_id)] == ["Your trial ends in 3 days"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtp_auth_from_the_url(database_url: str, tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "auth", credentials=("billing", "s3cret")) as sink:
        assert sink.url.startswith("smtp://billing:s3cret@127.0.0.1:")
        good = await Mailer.open(database_url, sink.url + "?from=Billing%20%3Cbilling@acme.test%3E")
        bad = await Mailer.open(database_url, sink.url.replace("s3cret", "wrong"))
        try:
            req = request("resumed")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                await bad.send(req)
            assert (await good.send(req)).sent
            [m] = sink.messages(req.org_id)
            assert m.message_id == message_id(req.key, "acme.test")
        finally:
            await good.close()
            await bad.close()


# -- alerts --------------------------------------------------------------------------------------------


@pytest.fixture
async def alert_sender(database_url: str, mailer: Mailer) -> AsyncIterator[AlertSender]:
    pool = LeanPool(database_url, 2)
    await pool.open()
    yield AlertSender(pool, mailer)
    await pool.close()


async def add_profile(url: str, org: str, email: str) -> None:
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO billing_profiles (org_id, email, created_at, updated_at) VALUES (%s, %s, %s, %s)",
            (org, email, T0, T0))


async def test_ledger_alerts_are_emailed_once(
    ledger: Ledger, new_org: OrgFactory, alert_sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")  # 3,000 credits from T0
    at = T0 + timedelta(hours=1)
    await ledger.set_low_balance_alert(org, Decimal("700"))
    await ledger.set_usage_guard(org, "lead_enrichment", max_uses=1, window=timedelta(hours=1))
    await ledger.debit(org, "lead_enrichment", idempotency_key=f"{org}:le1", now=at)
    with pytest.raises(UsageGuardPaused):
        await ledger.debit(org, "lead_enrichment", idempotency_key=f"{org}:le2", now=at)
    # 48 smart insights = 2,400 credits: 2,405 used (80%), 595 left (below 700).
    await ledger.debit(org, "insight", tier="smart", quantity=48, idempotency_key=f"{org}:i1", now=at)
    assert [a.kind for a in await ledger.pending_alerts(org)] == ["usage_guard_paused", "plan_80", "low_balance"]

    await alert_sender.send_pending(at)
    assert sink.messages(org) == []  # no profile, no recipient: the alerts wait
    assert len(await ledger.pending_alerts(org)) == 3

    await add_profile(database_url, org, "owner@acme.test")
    assert await alert_sender.send_pending(at) >= 3
    assert await alert_sender.send_pending(at) == 0
    assert await ledger.pending_alerts(org) == []

    await ledger.debit(org, "insight", tier="smart", quantity=Decimal("11.9"), idempotency_key=f"{org}:i2",
                       now=at)  # 3,000 used: 100%
    assert await alert_sender.send_pending(at) >= 1
    assert await alert_sender.send_pending(at) == 0

    got = sink.messages(org)
    assert [(m.template, m.subject) for m in got] == [
        ("usage_guard_paused", "lead_enrichment paused: unusual usage"),
        ("usage_80", "80% of your plan credits used"),
        ("low_balance", "Low credit balance"),
        ("credits_exhausted", "Your plan credits are used up"),
    ]
    guard, used, low, exhausted = got
    assert "lead_enrichment is paused for your organization: it went past its limit of 1 use per hour" in guard.text
    assert "used 2,405 of its 3,000 plan credits this period (80%)" in used.text
    assert "down to 595 credits, below your alert threshold of\n700 credits" in low.text
    assert "all 3,000 plan credits" in exhausted.text
    assert all(m.to == "owner@acme.test" and m.key.startswith("alert:") for m in got)


async def test_an_80_alert_overtaken_by_100_is_not_sent(
    ledger: Ledger, new_org: OrgFactory, alert_sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    at = T0 + timedelta(hours=1)
    await ledger.debit(org, "insight", tier="smart", quantity=48, idempotency_key=f"{org}:i1", now=at)
    await ledger.debit(org, "insight", tier="smart", quantity=12, idempotency_key=f"{org}:i2", now=at)
    await add_profile(database_url, org, "owner@acme.test")
    await alert_sender.send_pending(at)
    assert [m.template for m in sink.messages(org)] == ["credits_exhausted"]
    assert await ledger.pending_alerts(org) == []


async def test_a_usage_alert_of_an_ended_period_is_retired_unsent(
    ledger: Ledger, new_org: OrgFactory, alert_sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    await ledger.debit(org, "insight", tier="smart", quantity=48, idempotency_key=f"{org}:i1",
                       now=T0 + timedelta(hours=1))
    await add_profile(database_url, org, "owner@acme.test")
    renewal = T0 + timedelta(days=31)  # the next period started before the alert went out
    await ledger.start_period(StartPeriod(org, f"{org}:renewal", "starter", renewal, renewal + timedelta(days=28),
                                          renewal))
    await alert_sender.send_pending(renewal + timedelta(hours=1))
    assert sink.messages(org) == []
    assert await ledger.pending_alerts(org) == []


async def test_the_poller_sends_and_stops(
    ledger: Ledger, new_org: OrgFactory, alert_sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    org = await new_org("starter")
    at = T0 + timedelta(hours=1)
    await ledger.debit(org, "insight", tier="smart", quantity=60, idempotency_key=f"{org}:all", now=at)
    await add_profile(database_url, org, "owner@acme.test")
    stop = asyncio.Event()
    task = asyncio.create_task(alert_sender.run(stop, interval=0.05, clock=lambda: at))
    for _ in range(200):
        if sink.messages(org):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [m.template for m in sink.messages(org)] == ["credits_exhausted"]


async def test_an_alert_with_a_bad_address_waits_without_blocking_others(
    ledger: Ledger, new_org: OrgFactory, alert_sender: AlertSender, sink: SmtpSink, database_url: str
) -> None:
    bad, good = await new_org("starter"), await new_org("starter")
    at = T0 + timedelta(hours=1)
    for org in (bad, good):
        await ledger.debit(org, "insight", tier="smart", quantity=48, idempotency_key=f"{org}:i1", now=at)
    await add_profile(database_url, bad, "not an address")
    await add_profile(database_url, good, "owner@acme.test")
    assert await alert_sender.send_pending(at) >= 1
    assert await alert_sender.send_pending(at) == 0  # the bad one is passed over, not retried in a loop
    assert sink.messages(bad) == [] and [m.template for m in sink.messages(good)] == ["usage_80"]
    assert [a.kind for a in await ledger.pending_alerts(bad)] == ["plan_80"]  # left unsent
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("DELETE FROM alerts WHERE org_id = %s", (bad,))  # not left for other tests' pollers


async def test_the_relay_sends_what_a_workflow_left_once_smtp_is_back(database_url: str, sink: SmtpSink) -> None:
    """A workflow stops waiting on an SMTP server that is down (workflows/common.py notify); the outbox
    keeps the rendering and the relay sends it once, after RELAY_AFTER, when the server is back."""
    down = await Mailer.open(database_url, f"smtp://127.0.0.1:{free_port()}", timeout=5)
    req = request("receipt")
    try:
        with pytest.raises(OSError):
            await down.send(req)
        with pytest.raises(OSError):  # still down: the relay's poll fails and tries again next time
            await down.relay(T0 + timedelta(minutes=5), limit=1000)
    finally:
        await down.close()
    up = await Mailer.open(database_url, sink.url)
    try:
        await up.relay(T0 + timedelta(seconds=30), limit=1000)  # too recent: the workflow may still send it
        assert sink.messages(req.org_id) == []
        await up.relay(T0 + timedelta(minutes=5), limit=1000)
        await up.relay(T0 + timedelta(minutes=6), limit=1000)  # sent: never again
        assert (await up.send(req)).sent is False              # the workflow's own retry finds it sent
    finally:
        await up.close()
    assert [m.subject for m in sink.messages(req.org_id)] == ["Receipt INV-2026-000042: EUR 270.00"]
    row = await outbox_row(database_url, req.key)
    assert row is not None and row[3] == T0 + timedelta(minutes=5)


async def test_the_relay_passes_over_what_failed_for_good(mailer: Mailer, sink: SmtpSink) -> None:
    req = request("receipt", to="gone@acme.test")
    sink.refuse.add(req.to)
    assert (await mailer.send(req)).failed
    sink.refuse.clear()
    await mailer.relay(T0 + timedelta(hours=1), limit=1000)
    assert sink.messages(req.org_id) == []
