"""The fake Stripe of the embedded stack: localstripe in its own process, in memory, on loopback.

It is reached by the real `stripe` SDK (`StripeClient(base_addresses={"api": url})`, see
payments/stripe_client.py). localstripe ignores Idempotency-Key: exactly-once is ours (the payments table).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from payments.stripe_client import DUMMY_API_KEY
from settings import ROOT

# localstripe's test cards (docs/architecture.md, the embedded stack).
CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000341"           # attaches, then every charge is declined
CARD_DECLINED_AT_ATTACH = "4000000000000002"
CARD_REQUIRES_AUTHENTICATION = "4000002500003155"


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/v1/customers", params={"limit": "1"},
                               headers={"Authorization": f"Bearer {DUMMY_API_KEY}"}) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@asynccontextmanager
async def start_localstripe(
    port: int | None = None, *, state_file: Path | None = None, wait: float = 30.0
) -> AsyncIterator[str]:
    """Start localstripe on 127.0.0.1:`port` (a free port when None) and yield its base URL
    ("http://127.0.0.1:PORT") once it answers; terminate it on exit. With `state_file` its objects
    outlive the process (saved every few seconds and at shutdown); without, it starts empty."""
    args = [sys.executable, "-m", "stack.localstripe_main", "--port", str(port or 0)]
    if state_file is not None:
        args += ["--state", str(state_file)]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), wait)
        if not line.strip().isdigit():
            raise RuntimeError(f"localstripe did not start (exit code {await proc.wait()})")
        url = f"http://127.0.0.1:{int(line)}"
        deadline = time.monotonic() + wait
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not await _answers(session, url):
                if proc.returncode is not None:
                    raise RuntimeError(f"localstripe exited with code {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"localstripe did not answer on {url} within {wait}s")
                await asyncio.sleep(0.05)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()  # SIGTERM: a graceful stop, which saves the state file
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
