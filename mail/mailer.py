"""Transactional email: render a jinja2 template, send it over SMTP at most once per business key.

Templates (templates/emails/): `{name}.subject.txt` (one line), `{name}.txt` and `{name}.html`; the HTML
extends `_base.html` (which shows the subject as title and heading), the text `_base.txt`. Every template
gets the request's context plus `org_id`; the bodies also get the rendered `subject`. Rendering is strict:
a context key the template uses and the request lacks is an error, never an empty string.

Exactly once, with the outbox table (migrations/versions/0002_billing.sql):
1. the rendering is stored under the key (INSERT ... ON CONFLICT DO NOTHING) and committed BEFORE any
   send, so a retry resends exactly what was rendered, never a re-rendering; in the same transaction, the
   webhook event the email stands for, if any (webhooks/events.py: a subscription's or an auto-recharge's
   step has no other durable record);
2. the row is locked (FOR UPDATE NOWAIT: a concurrent attempt backs off and lets Temporal retry it);
   already stamped -> nothing is sent (sent=False); else SMTP, then sent_at is stamped and committed.
The one window left is a crash between the SMTP server's "250" and the commit of the stamp: the retry
sends again, with the same deterministic Message-ID, so a receiver can drop the copy.

A message the server refuses for good (5xx) is recorded as failed on its row (failed_at, error: 0004) and
answered `failed=...`, never raised: a notification never fails the money step, update or workflow that
sent it. Connection errors and 4xx answers raise for Temporal to retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jinja2
from psycopg import AsyncConnection
from psycopg.errors import LockNotAvailable
from temporalio.exceptions import ApplicationError

from activities.errors import invalid
from ledger.pool import LeanPool
from models.billing_types import EmailResult, SendEmail
from models.checks import check_email, check_key
from models.errors import IdempotencyConflict, InvalidRequest, to_application_error
from templates import TEMPLATES_DIR
from webhooks.events import record_email_event

log = logging.getLogger(__name__)

DEFAULT_SENDER = "Billing <billing@localhost>"
RELAY_AFTER = timedelta(minutes=2)  # longer than a workflow's own attempts at an email (workflows/common.py)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TRUE = {"1", "true", "yes", "on"}

_SELECT = (
    "SELECT org_id, template, to_addr, subject, text_body, html_body, created_at, sent_at, error "
    "FROM outbox WHERE key = %s"
)
_INSERT = (
    "INSERT INTO outbox (key, org_id, template, to_addr, subject, text_body, html_body, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING"
)


class EmailRefused(Exception):
    """The SMTP server refused the message for good (5xx): retrying cannot deliver it."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


class EmailTemplates:
    """The email templates of a directory, compiled once (a syntax error fails at startup)."""

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.dir = Path(templates_dir) / "emails"
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.dir),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self._compiled: dict[str, tuple[jinja2.Template, jinja2.Template, jinja2.Template]] = {}
        for subject in sorted(self.dir.glob("*.subject.txt")):
            name = subject.name.removesuffix(".subject.txt")
            if _NAME.fullmatch(name):
                self._compiled[name] = (
                    self.env.get_template(subject.name),
                    self.env.get_template(f"{name}.txt"),
                    self.env.get_template(f"{name}.html"),
                )

    def names(self) -> list[str]:
        return sorted(self._compiled)

    def __contains__(self, name: object) -> bool:
        return name in self._compiled

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        """Raises ApplicationError(type="InvalidRequest") for an unknown template or a missing key."""
        if name not in self._compiled:
            raise invalid(f"unknown email template {name!r}; known: {', '.join(self.names())}")
        subject_t, text_t, html_t = self._compiled[name]
        try:
            # One line, whatever the template's whitespace: a newline in a header would be an injection.
            subject = " ".join(subject_t.render(context).split())
            if not subject:
                raise invalid(f"email template {name!r} rendered an empty subject")
            # The bodies get the subject too: the HTML layout shows it as the title and heading.
            body_context = {**context, "subject": subject}
            text, html = text_t.render(body_context), html_t.render(body_context)
        except jinja2.UndefinedError as exc:
            raise invalid(f"email template {name!r}: {exc.message}") from exc
        return Rendered(subject, text, html)


@dataclass(frozen=True)
class SmtpTarget:
    """SMTP_URL: smtp://host:port, smtp://user:pass@host:port, smtps://host:port (TLS from the first
    byte), smtp://...?starttls=true; optional &from=billing@example.com (the sender address)."""

    host: str
    port: int
    tls: bool
    starttls: bool
    user: str | None
    password: str | None
    sender: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"SMTP_URL must look like smtp://host:port or smtps://host:port, got {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls else 25),
            tls=tls,
            starttls=query.get("starttls", "").lower() in _TRUE,
            user=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            sender=query.get("from"),
        )


def message_id(key: str, domain: str) -> str:
    """Deterministic: every attempt for a key carries the same Message-ID, so receivers can dedupe."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


class Mailer:
    def __init__(
        self, pool: LeanPool, smtp_url: str, *, templates_dir: Path = TEMPLATES_DIR,
        sender: str | None = None, timeout: float = 30.0,
    ) -> None:
        self.pool = pool
        self.smtp = SmtpTarget.parse(smtp_url)
        self.templates = EmailTemplates(templates_dir)
        self.sender = sender or self.smtp.sender or DEFAULT_SENDER
        address = parseaddr(self.sender)[1]
        if "@" not in address:
            raise ValueError(f"the sender must be an email address, got {self.sender!r}")
        self.domain = address.rsplit("@", 1)[1]
        self.timeout = timeout
        self._owns_pool = False

    @classmethod
    async def open(cls, database_url: str, smtp_url: str, *, pool_size: int = 2, **kwargs: Any) -> Mailer:
        """With its own small pool: a send holds its connection for the SMTP exchange, which must not
        starve the ledger's hot path."""
        pool = LeanPool(database_url, pool_size)
        await pool.open()
        mailer = cls(pool, smtp_url, **kwargs)
        mailer._owns_pool = True
        return mailer

    async def close(self) -> None:
        if self._owns_pool:
            await self.pool.close()

    def render(self, template: str, context: dict[str, Any], org_id: str) -> Rendered:
        return self.templates.render(template, {**context, "org_id": org_id})

    async def send(self, req: SendEmail) -> EmailResult:
        self._check(req)
        async with self.pool.connection() as conn:
            cur = await conn.execute(_SELECT, (req.key,))
            stored = await cur.fetchone()
            if stored is None:
                r = self.render(req.template, req.context, req.org_id)
                # Committed before any send: a retry finds it and resends this rendering. The webhook event
                # the email stands for (a subscription's step, an auto-recharge's) is written in the same
                # transaction: the outbox row is that step's durable record (webhooks/events.py).
                async with conn.transaction():
                    cur = await conn.execute(_INSERT, (req.key, req.org_id, req.template, req.to, r.subject,
                                                       r.text, r.html, req.now))
                    if cur.rowcount == 1:
                        await record_email_event(conn, org_id=req.org_id, key=req.key, template=req.template,
                                                 context=req.context, at=req.now)
        try:
            return await self._send_stored(req.key, req.now, expect=(req.org_id, req.template, req.to))
        except LockNotAvailable as exc:
            # Another attempt is sending this key right now; Temporal retries this one, which then sees
            # the stamp (or, if that attempt died, sends).
            raise ApplicationError(f"email {req.key!r} is being sent by another attempt",
                                   type="EmailInFlight") from exc

    async def _send_stored(self, key: str, now: datetime, *, expect: tuple[str, str, str] | None) -> EmailResult:
        """Send the stored rendering of `key` unless it is sent or failed (LockNotAvailable when another
        attempt holds it). `expect`: the (org, template, recipient) the caller asked for."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_SELECT + " FOR UPDATE NOWAIT", (key,))
            row = await cur.fetchone()
            assert row is not None, "outbox rows are never deleted"
            org_id, template, to_addr, subject, text, html, created_at, sent_at, error = row
            if expect is not None and (org_id, template, to_addr) != expect:
                raise to_application_error(IdempotencyConflict(org_id, key))
            if sent_at is not None or error is not None:
                return EmailResult(key, sent=False, failed=error)
            msg = self._message(key, org_id, template, to_addr, subject, text, html, created_at)
            try:
                await asyncio.to_thread(self._deliver, msg)
            except EmailRefused as refused:
                # Refused for good: recorded where operators find it (outbox.failed_at), and the money
                # step or workflow that sent it goes on (failure model rule 2). Never retried.
                await conn.execute("UPDATE outbox SET failed_at = %s, error = %s WHERE key = %s",
                                   (now, str(refused), key))
                log.warning("email %s (%s) to the billing contact of %s refused for good: %s", key,
                            template, org_id, refused)
                return EmailResult(key, sent=False, failed=str(refused))
            await self._stamp(conn, key, now)
        return EmailResult(key, sent=True)

    async def relay(self, now: datetime, *, older_than: timedelta = RELAY_AFTER, limit: int = 100) -> int:
        """Send the outbox rows left unsent (neither sent nor failed) for longer than `older_than`: a
        workflow gives up waiting on an SMTP server that is down (it never holds a subscription's lock
        that long), and its email goes out from here once the server is back. Returns how many were
        sent; a row another attempt is sending is passed over; a connection error propagates."""
        rows = await self.pool.fetchall(
            "SELECT key FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL AND created_at <= %s "
            "ORDER BY created_at LIMIT %s", (now - older_than, limit))
        sent = 0
        for (key,) in rows:
            try:
                result = await self._send_stored(key, now, expect=None)
            except LockNotAvailable:
                continue
            sent += result.sent
        return sent

    def _check(self, req: SendEmail) -> None:
        try:
            check_key("key", req.key)  # the key rule of models/keys.py: a pack receipt's can be 1,200 chars
        except InvalidRequest as exc:
            raise invalid(exc.message) from None
        if req.template not in self.templates:
            raise invalid(f"unknown email template {req.template!r}; known: {', '.join(self.templates.names())}")
        try:
            check_email("to", req.to)
        except InvalidRequest as exc:
            raise invalid(exc.message) from None
        if req.now.tzinfo is None:
            raise invalid(f"now must be a timezone-aware datetime, got {req.now!r}")

    async def _stamp(self, conn: AsyncConnection[Any], key: str, at: datetime) -> None:
        """Mark the key sent (the table's trigger refuses a second stamp). A separate method so tests
        can make it fail, as a crash right after the SMTP send would."""
        cur = await conn.execute("UPDATE outbox SET sent_at = %s WHERE key = %s AND sent_at IS NULL", (at, key))
        if cur.rowcount != 1:
            raise RuntimeError(f"outbox {key!r}: expected one unsent row to stamp")

    def _message(
        self, key: str, org_id: str, template: str, to_addr: str, subject: str, text: str, html: str,
        created_at: datetime,
    ) -> EmailMessage:
        # Built only from the stored row, so every attempt sends the same message.
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = Address(addr_spec=to_addr)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(created_at)
        msg["Message-ID"] = message_id(key, self.domain)
        msg["X-Billing-Template"] = template
        msg["X-Billing-Org"] = org_id
        msg["X-Billing-Key"] = key
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        # Not random either: every attempt sends the same bytes.
        msg.set_boundary(f"==billing-{hashlib.sha256(('boundary:' + key).encode()).hexdigest()[:32]}")
        return msg

    def _deliver(self, msg: EmailMessage) -> None:
        """Blocking SMTP exchange (run in a thread). Connection errors and transient (4xx) refusals
        propagate for Temporal to retry; a permanent (5xx) refusal of the message is EmailRefused."""
        t = self.smtp
        context = ssl.create_default_context() if t.tls or t.starttls else None
        client: smtplib.SMTP = (
            smtplib.SMTP_SSL(t.host, t.port, timeout=self.timeout, context=context) if t.tls
            else smtplib.SMTP(t.host, t.port, timeout=self.timeout)
        )
        with client:
            if t.starttls:
                client.starttls(context=context)
            if t.user is not None:
                client.login(t.user, t.password or "")
            try:
                client.send_message(msg)
            except smtplib.SMTPRecipientsRefused as exc:
                if all(code >= 500 for code, _ in exc.recipients.values()):
                    raise EmailRefused(f"the SMTP server refused {msg['To']}: {exc.recipients}") from exc
                raise
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                if exc.smtp_code >= 500:
                    raise EmailRefused(
                        f"the SMTP server refused the message: {exc.smtp_code} {exc.smtp_error!r}") from exc
                raise
