"""The whole stack with its embedded defaults: what runs where, resolved from Settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from settings import Settings
from stack.mail import SmtpSink
from stack.postgres import migrate, start_embedded
from stack.stripe_server import start_localstripe
from stack.temporal import connect_client, start_dev_server

LOCALSTRIPE_PORT = 8420  # the embedded defaults' fixed ports, so an operator knows where to look
SMTP_SINK_PORT = 8025


@dataclass(frozen=True)
class Running:
    database_url: str
    database_embedded: bool
    temporal_address: str
    temporal_embedded: bool
    temporal_ui: str | None
    client: Client
    stripe_url: str | None   # the fake Stripe's base URL; None with STRIPE_API_KEY (the real API)
    smtp_url: str
    maildir: Path | None     # where the embedded SMTP sink writes .eml files; None with SMTP_URL


async def database(settings: Settings) -> tuple[str, bool]:
    """The database URL (embedded PostgreSQL under .data/ when DATABASE_URL is unset), migrated."""
    if settings.database_url:
        url, embedded = settings.database_url, False
    else:
        url = await asyncio.to_thread(start_embedded, settings.data_dir / "postgres")
        embedded = True
    await asyncio.to_thread(migrate, url)
    return url, embedded


@asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        url, db_embedded = await database(settings)
        if settings.temporal_address:
            client = await connect_client(settings)
            address, ui, t_embedded = settings.temporal_address, None, False
        else:
            env = await start_dev_server(settings.data_dir / "temporal.db")
            stack.push_async_callback(env.shutdown)
            client = env.client
            address, ui, t_embedded = "localhost:7233", "http://localhost:8233", True
        stripe_url = None
        if not settings.stripe_api_key:
            stripe_url = await stack.enter_async_context(
                start_localstripe(LOCALSTRIPE_PORT, state_file=settings.data_dir / "localstripe.pickle"))
        smtp_url, maildir = settings.smtp_url, None
        if not smtp_url:
            maildir = settings.data_dir / "mail"
            sink = SmtpSink(maildir, SMTP_SINK_PORT).start()
            stack.callback(sink.stop)
            smtp_url = sink.url
        yield Running(url, db_embedded, address, t_embedded, ui, client, stripe_url, smtp_url, maildir)
