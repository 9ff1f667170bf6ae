"""A fault proxy in front of the fake Stripe: a reverse proxy on loopback that a test programs to fail the
requests it names, the way Stripe and the network fail.

    async with StripeFaultProxy(localstripe_url) as proxy:      # or start_testkit(stripe_faults=True)
        client = stripe_client(base_url=proxy.url)
        proxy.inject("response_lost", path="/v1/payment_intents", key_prefix="acme:")  # the next one
        proxy.inject("500", times=None)                          # every matching request, until cleared
        proxy.clear()
        proxy.seen(path="/v1/payment_intents", fault="500")      # what reached the proxy, and its fate

A fault matches by method, path prefix and (optionally) Idempotency-Key prefix, for the next `times`
matching requests or, with `times=None`, every one until it is cleared. The faults (`FaultKind`):

| kind            | reaches Stripe | what the client gets                                                 |
|-----------------|----------------|----------------------------------------------------------------------|
| `500`           | no             | HTTP 500, a Stripe `api_error` body                                   |
| `429`           | no             | HTTP 429 with `Retry-After`, a Stripe `rate_limit` body               |
| `timeout`       | no             | nothing: held until the client gives up (its own timeout)            |
| `late`          | yes            | the answer held until the client gave up: the effect happened, unseen |
| `reset`         | no             | the connection reset (TCP RST) before any answer                      |
| `response_lost` | yes            | the connection reset after Stripe answered: the effect happened       |
| `401`           | no             | HTTP 401, a Stripe authentication error body                          |
| `400`           | no             | HTTP 400, `{"error": {"type": "invalid_request_error", ...}}`         |

Every request is recorded (`requests`), faulted or not. Loopback only; a held request is held at most
`hold_limit` seconds, so a test that forgets one cannot hang on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, get_args

import aiohttp
from aiohttp import web

FaultKind = Literal["500", "429", "timeout", "late", "reset", "response_lost", "401", "400"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
# Stripe answers these for good: retrying the same request cannot succeed.
PERMANENT: frozenset[FaultKind] = frozenset({"401", "400"})
# The request reaches Stripe, so its effect (a PaymentIntent) exists although the client never hears of it.
FORWARDED: frozenset[FaultKind] = frozenset({"late", "response_lost"})

HOST = "127.0.0.1"
# Hop-by-hop and framing headers the proxy rewrites itself.
_SKIP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


@dataclass
class Fault:
    """One programmed fault; `remaining` None: every matching request until cleared."""

    kind: FaultKind
    method: str
    path: str
    key_prefix: str | None
    remaining: int | None
    retry_after: int
    fired: int = 0

    def matches(self, method: str, path: str, key: str | None) -> bool:
        return (self.remaining is None or self.remaining > 0) and method == self.method \
            and path.startswith(self.path) \
            and (self.key_prefix is None or (key is not None and key.startswith(self.key_prefix)))


@dataclass(frozen=True)
class SeenRequest:
    """A request that reached the proxy: `fault` the one it got (None: passed through), `status` the
    status the client was answered (None: the connection was reset or the client gave up first)."""

    method: str
    path: str
    idempotency_key: str | None
    fault: FaultKind | None
    status: int | None
    at: float = field(compare=False)  # time.monotonic() when it arrived


def _stripe_error(status: int, kind: str, message: str, code: str | None = None,
                  headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, str] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    return web.Response(status=status, text=json.dumps({"error": error}), content_type="application/json",
                        headers=headers)


def _reset(request: web.Request) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), as a dropped connection looks."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class StripeFaultProxy:
    """`async with StripeFaultProxy(upstream) as proxy`: serves on 127.0.0.1 at a free port (`url`)."""

    def __init__(self, upstream: str, *, hold_limit: float = 120.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold_limit = hold_limit
        self.faults: list[Fault] = []
        self.requests: list[SeenRequest] = []
        self._url: str | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the Stripe fault proxy is not running")
        return self._url

    # -- programming faults ------------------------------------------------------------------------------

    def inject(self, kind: FaultKind, *, method: str = "POST", path: str = "/v1/payment_intents",
               key_prefix: str | None = None, times: int | None = 1, retry_after: int = 1) -> Fault:
        """Fail the next `times` requests matching `method`, the `path` prefix and the Idempotency-Key
        prefix `key_prefix` (None: any) with `kind`; `times=None`: every one until `clear`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None: until cleared), got {times}")
        fault = Fault(kind, method.upper(), path, key_prefix, times, retry_after)
        self.faults.append(fault)
        return fault

    def clear(self, fault: Fault | None = None) -> None:
        """Remove `fault`, or every fault."""
        if fault is None:
            self.faults.clear()
        elif fault in self.faults:
            self.faults.remove(fault)

    def seen(self, *, method: str | None = None, path: str | None = None, key_prefix: str | None = None,
             fault: FaultKind | Literal["any"] | None = "any") -> list[SeenRequest]:
        """The recorded requests matching each filter given (`fault=None`: those passed through)."""
        return [r for r in self.requests
                if (method is None or r.method == method.upper())
                and (path is None or r.path.startswith(path))
                and (key_prefix is None or (r.idempotency_key or "").startswith(key_prefix))
                and (fault == "any" or r.fault == fault)]

    async def wait_seen(self, count: int, *, within: float = 120.0, method: str | None = None,
                        path: str | None = None, key_prefix: str | None = None,
                        fault: FaultKind | Literal["any"] | None = "any") -> list[SeenRequest]:
        """Wait until at least `count` recorded requests match (a bound on a hang, not a timed assertion)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(found := self.seen(method=method, path=path, key_prefix=key_prefix, fault=fault)) < count:
            if loop.time() > deadline:
                raise TimeoutError(f"the Stripe fault proxy saw {len(found)} of {count} matching requests "
                                   f"within {within}s")
            await asyncio.sleep(0.05)
        return found

    # -- serving -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> StripeFaultProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.hold_limit),
                                              auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a held request's handler ends when its client gives up and disconnects.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self._url = f"http://{HOST}:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.faults.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._url = None

    def _take(self, method: str, path: str, key: str | None) -> Fault | None:
        """The first programmed fault matching the request, used once."""
        for fault in self.faults:
            if fault.matches(method, path, key):
                fault.fired += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        key = request.headers.get("Idempotency-Key")
        fault = self._take(request.method, request.path, key)
        kind = fault.kind if fault is not None else None
        status: int | None = None
        try:
            if kind in (None, "late", "response_lost"):
                upstream = await self._forward(request, body)
                if kind == "response_lost":
                    _reset(request)
                    return upstream
                if kind == "late":
                    await self._hold()
                    return upstream
                status = upstream.status
                return upstream
            if kind == "timeout":
                await self._hold()
                _reset(request)
                return web.Response(status=504)
            if kind == "reset":
                _reset(request)
                return web.Response(status=502)
            assert fault is not None
            response = self._refusal(kind, fault.retry_after)
            status = response.status
            return response
        finally:
            self.requests.append(SeenRequest(request.method, request.path, key, kind, status, arrived))

    @staticmethod
    def _refusal(kind: FaultKind, retry_after: int) -> web.Response:
        if kind == "500":
            return _stripe_error(500, "api_error", "An unknown error occurred (injected by the fault proxy)")
        if kind == "429":
            return _stripe_error(429, "invalid_request_error",
                                 "Request rate limit exceeded (injected by the fault proxy)", "rate_limit",
                                 headers={"Retry-After": str(retry_after)})
        if kind == "401":
            return _stripe_error(401, "invalid_request_error",
                                 "Invalid API Key provided: sk_test_****pe (injected by the fault proxy)")
        assert kind == "400"
        return _stripe_error(400, "invalid_request_error",
                             "Invalid request (injected by the fault proxy)", "parameter_invalid_empty")

    async def _hold(self) -> None:
        """Hold until the client gives up (its disconnect cancels this handler) or `hold_limit`."""
        await asyncio.sleep(self.hold_limit)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=body) as answer:
            content = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _SKIP_HEADERS}
            return web.Response(status=answer.status, body=content, headers=out)
