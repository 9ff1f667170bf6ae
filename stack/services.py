"""The whole stack with its embedded defaults: what runs where, resolved from Settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from ledger.migrate import migrate
from settings import LOCALSTRIPE_PORT, SMTP_SINK_PORT, Settings
from stack.mail import SmtpSink
from stack.postgres import start_embedded
from stack.stripe_server import start_localstripe
from stack.temporal import start_dev_server
from temporal_client import connect_client
from worker import Running


async def database(settings: Settings) -> tuple[str, bool]:
    """The database URL: DATABASE_URL, else the embedded PostgreSQL under .data/ (started if needed)."""
    if settings.database_url:
        return settings.database_url, False
    return await asyncio.to_thread(start_embedded, settings.data_dir / "postgres"), True


@asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Running]:
    async with AsyncExitStack() as stack:
        url, db_embedded = await database(settings)
        await asyncio.to_thread(migrate, url)  # the development stack migrates for you (`billing migrate`)
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
