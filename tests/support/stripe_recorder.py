"""A recording reverse proxy in front of the fake Stripe, in a process of its own as Stripe is: it stamps
each request's arrival (time.time(): on this machine the clock PostgreSQL's windows are seconds of) and
forwards it to localstripe untouched. The ceiling's tests and bench/storm.py count Stripe requests per
second at Stripe's side with it.

    async with stripe_recorder(localstripe_url) as rec:
        client = stripe_client(base_url=rec.url)
        ...
        arrivals = await rec.arrivals()   # [(epoch seconds, method, path)], in arrival order
        peak_per_second([t for t, _, _ in arrivals])
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
ARRIVALS_PATH = "/__recorder/arrivals"  # answered by the proxy itself, never forwarded nor recorded
# Hop-by-hop and framing headers aiohttp writes itself.
_SKIP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}

Arrival = tuple[float, str, str]


@dataclass(frozen=True)
class Recorder:
    url: str

    async def arrivals(self) -> list[Arrival]:
        async with aiohttp.ClientSession() as session, session.get(self.url + ARRIVALS_PATH) as resp:
            resp.raise_for_status()
            return [(float(t), str(m), str(p)) for t, m, p in await resp.json()]


def per_second(times: Sequence[float]) -> Counter[int]:
    """Requests per second of the clock (the windows the ceiling counts in)."""
    return Counter(int(t // 1) for t in times)


def peak_per_second(times: Sequence[float]) -> int:
    return max(per_second(times).values(), default=0)


def peak_sliding(times: Sequence[float]) -> int:
    """The most requests within any one-second span [t, t + 1), wherever it starts."""
    ts = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@asynccontextmanager
async def stripe_recorder(target: str) -> AsyncIterator[Recorder]:
    """The proxy in front of `target` (localstripe's base URL) on a free loopback port, until exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.stripe_recorder", target, cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.strip().isdigit():
            raise RuntimeError(f"the Stripe recorder did not start (exit code {await proc.wait()})")
        yield Recorder(f"http://127.0.0.1:{int(line)}")
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the proxy stops when its stdin closes (or the parent dies)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# -- the proxy process -----------------------------------------------------------------------------------


async def _serve(target: str) -> None:
    arrivals: list[Arrival] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.StreamResponse:
        now = time.time()  # first thing: the arrival, before the body is read
        if request.path == ARRIVALS_PATH:
            return web.json_response(arrivals)
        arrivals.append((now, request.method, request.path))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        async with session.request(request.method, target + request.path_qs, headers=headers, data=body) as up:
            data = await up.read()
            back = {k: v for k, v in up.headers.items() if k.lower() not in _SKIP}
            return web.Response(status=up.status, body=data, headers=back)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin (or dies)
    await runner.cleanup()
    await session.close()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1].rstrip("/")))
