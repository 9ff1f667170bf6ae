"""The embedded email default: an SMTP sink on loopback (aiosmtpd, in its own thread) that stores every
message it receives as a .eml file and keeps the parsed messages in memory for the test kit and tests.

It records faithfully what arrives, duplicates included: tests use it to prove at-most-once delivery.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedEmail:
    to: str
    subject: str
    template: str      # X-Billing-Template
    org_id: str        # X-Billing-Org
    key: str           # X-Billing-Key
    text: str
    html: str
    message_id: str
    path: Path         # the stored .eml file


def free_port(host: str = HOST) -> int:
    """A port free right now on loopback (aiosmtpd's Controller needs a real port to probe its server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return ""
    return str(part.get_content()).replace("\r\n", "\n")  # SMTP's line ends, as the sender wrote them


def parse_email(raw: bytes, path: Path) -> ReceivedEmail:
    msg = message_from_bytes(raw, policy=policy.default)

    def header(name: str) -> str:
        return str(msg.get(name, ""))

    return ReceivedEmail(
        to=header("To"), subject=header("Subject"), template=header("X-Billing-Template"),
        org_id=header("X-Billing-Org"), key=header("X-Billing-Key"), text=_body(msg, "plain"),
        html=_body(msg, "html"), message_id=header("Message-ID"), path=path,
    )


class _Handler:
    """aiosmtpd handler: runs on the sink's own event loop thread."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.sink.refuse:  # a mailbox that does not exist: refused for good
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or (
            envelope.content.encode() if isinstance(envelope.content, str) else envelope.content or b""
        )
        try:
            # Stored before "250": once the sender hears OK, the message is on disk and in the list.
            await asyncio.to_thread(self.sink._store, raw)
        except Exception as exc:
            return f"451 Requested action aborted: cannot store the message ({exc})"
        return "250 Message accepted for delivery"


class SmtpSink:
    """`with SmtpSink(maildir) as sink: ...` then `sink.url` for SMTP_URL and `sink.messages(org_id)`.

    `credentials=(user, password)` makes the sink require AUTH (plain text is allowed: loopback only),
    to exercise smtp://user:pass@host:port URLs.
    """

    def __init__(self, maildir: Path, port: int = 0, *, credentials: tuple[str, str] | None = None) -> None:
        self.maildir = Path(maildir)
        self.port = port
        self.credentials = credentials
        self._lock = threading.Lock()
        self._messages: list[ReceivedEmail] = []
        self._seq = itertools.count(1)
        self._controller: Controller | None = None
        # Recipients refused for good (550), so tests can inject a permanent refusal.
        self.refuse: set[str] = set()

    @property
    def url(self) -> str:
        if self._controller is None:
            raise RuntimeError("the SMTP sink is not running")
        if self.credentials:
            user, password = self.credentials
            return f"smtp://{user}:{password}@{HOST}:{self.port}"
        return f"smtp://{HOST}:{self.port}"

    def start(self) -> SmtpSink:
        if self._controller is not None:
            return self
        self.maildir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True}
        if self.credentials:
            kwargs |= {"authenticator": self._authenticate, "auth_required": True, "auth_require_tls": False}
        controller = Controller(_Handler(self), hostname=HOST, port=self.port, **kwargs)
        controller.start()  # returns once the server answers on the port
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def messages(self, org_id: str | None = None) -> list[ReceivedEmail]:
        """Every message received (of `org_id` when given), in arrival order."""
        with self._lock:
            return [m for m in self._messages if org_id is None or m.org_id == org_id]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def _store(self, raw: bytes) -> None:
        # Time first so `ls` sorts by arrival; the sequence and a random suffix make the name unique
        # even across sinks sharing a directory.
        name = f"{time.time_ns()}-{next(self._seq):06d}-{uuid.uuid4().hex[:8]}.eml"
        path = self.maildir / name
        path.write_bytes(raw)
        parsed = parse_email(raw, path)
        with self._lock:
            self._messages.append(parsed)

    def _authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        ok = (
            self.credentials is not None
            and isinstance(auth_data, LoginPassword)
            and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        )
        return AuthResult(success=ok, handled=False)

