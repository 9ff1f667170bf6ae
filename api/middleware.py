"""The credits middleware (DESIGN.md section 9, seed 001) for platform teams' own ASGI apps: a route declares
the action it costs; the cost is held before the handler runs, committed when the answer is 2xx, released
otherwise (4xx, 5xx, an exception, a client gone); every metered answer carries X-Credits-Cost,
X-Credits-Remaining, X-Concurrency-Limit and X-Concurrency-Remaining. A refusal (403 InsufficientCredits, 429
ConcurrencyLimitExceeded, ...) is answered as the billing API answers it (api/problems.py).

    app = CreditsMiddleware(app, meter=LedgerMeter(billing),          # or ApiMeter(api_url, api_key)
                            routes={"POST /v1/search": Cost("ai_chat", tier="smart")},
                            org=lambda conn: conn.headers.get("x-org-id"))

or, on a FastAPI route (the middleware installed once, the route declares its cost itself):

    @app.post("/v1/orgs/{org}/search")
    async def search(held: Annotated[HoldResult, Depends(charge(Cost("ai_chat", tier="smart")))]) -> ...

Pure ASGI: no BaseHTTPMiddleware, the body is streamed through untouched. docs/middleware.md tells the rules.
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import anyio
import httpx
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import PROBLEM_JSON, billing_problem
from models.errors import (
    ERRORS,
    BillingError,
    Forbidden,
    HoldNotOpen,
    IdempotencyConflict,
    NotAuthenticated,
    ServiceUnavailable,
    UnknownApiKey,
    error_fields,
)
from models.ledger_types import HoldResult

if TYPE_CHECKING:
    from starter import BillingClient

log = logging.getLogger(__name__)

T = TypeVar("T")
# A resolver reads the request (headers, query, path; in the FastAPI form the path parameters too); it may be
# async. It may raise a BillingError, which is answered as a problem.
Resolver = Callable[[HTTPConnection], T | Awaitable[T]]

COST = "X-Credits-Cost"
REMAINING = "X-Credits-Remaining"
CONCURRENCY_LIMIT = "X-Concurrency-Limit"
CONCURRENCY_REMAINING = "X-Concurrency-Remaining"
IDEMPOTENCY_KEY = b"idempotency-key"
SCOPE_KEY = "billing.credits"   # the request's metering state, in the ASGI scope (the FastAPI form finds it)

# The messages that carry (or end) an answer's body: the last of them settles the hold.
_BODY = ("http.response.body", "http.response.pathsend", "http.response.zerocopysend")
SETTLE_DEADLINE = 10.0   # seconds a commit or release may take, retries included (failure model rule 5)
SETTLE_ATTEMPTS = 3      # a settle that could not be answered (ServiceUnavailable) is tried again: idempotent


@dataclass(frozen=True)
class Cost:
    """What a request costs: the ledger's hold arguments. `ttl` bounds how long its credits stay reserved if
    neither commit nor release reaches the ledger (None: the ledger's default, 15 minutes). `tags` go with the
    use to the usage log (models/tags.py; a resolver may read them from the request: the contact, the result...)."""

    action: str
    tier: str | None = None
    quantity: int | Decimal = 1
    country: str | None = None
    ttl: timedelta | None = None
    tags: Mapping[str, str] | None = None


# A route's cost: fixed, or read from the request (a query flag that changes the quantity, say).
CostOf = Cost | Callable[[HTTPConnection], Cost | Awaitable[Cost | None] | None]


class Meter(Protocol):
    """Holds, commits and releases through the ledger (LedgerMeter) or the HTTP API (ApiMeter): the same
    results, the same typed errors (models/errors.py)."""

    async def hold(self, org_id: str, hold_id: str, cost: Cost, *, user_id: str | None = None) -> HoldResult: ...

    async def commit(self, org_id: str, hold_id: str) -> HoldResult: ...

    async def release(self, org_id: str, hold_id: str) -> HoldResult: ...


class LedgerMeter:
    """In-process: the ledger of a BillingClient, one database round trip per call."""

    def __init__(self, billing: BillingClient) -> None:
        self.billing = billing

    async def hold(self, org_id: str, hold_id: str, cost: Cost, *, user_id: str | None = None) -> HoldResult:
        return await self.billing.open_hold(org_id, action=cost.action, idempotency_key=hold_id, tier=cost.tier,
                                            quantity=cost.quantity, user_id=user_id, country=cost.country,
                                            ttl=cost.ttl, tags=cost.tags)

    async def commit(self, org_id: str, hold_id: str) -> HoldResult:
        return await self.billing.commit_hold(org_id, hold_id)

    async def release(self, org_id: str, hold_id: str) -> HoldResult:
        return await self.billing.release_hold(org_id, hold_id)


class ApiMeter:
    """Through the billing HTTP API: POST /v1/orgs/{org}/holds (Idempotency-Key: the hold id), then
    .../holds/{hold_id}/commit or /release. Its problems come back as the typed errors they name.
    `client` replaces the HTTP client (a transport of one's own); it is then the caller's to close."""

    def __init__(self, api_url: str, api_key: str, *, timeout: float = 10.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self._own = client is None
        self.client = client or httpx.AsyncClient(timeout=timeout)
        self.base = api_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()

    async def __aenter__(self) -> ApiMeter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _url(self, org_id: str, *rest: str) -> str:
        return "/".join([self.base, "v1", "orgs", quote(org_id, safe=""), "holds", *(quote(r, safe="") for r in rest)])

    async def hold(self, org_id: str, hold_id: str, cost: Cost, *, user_id: str | None = None) -> HoldResult:
        quantity = cost.quantity if isinstance(cost.quantity, int) else str(cost.quantity)  # credits: no floats
        body: dict[str, Any] = {"action": cost.action, "quantity": quantity}
        if cost.tier is not None:
            body["tier"] = cost.tier
        if cost.country is not None:
            body["country"] = cost.country
        if user_id is not None:
            body["user_id"] = user_id
        if cost.ttl is not None:
            body["ttl_seconds"] = int(cost.ttl.total_seconds())
        if cost.tags:
            body["tags"] = dict(cost.tags)
        return await self._call(self._url(org_id), body, {"Idempotency-Key": hold_id})

    async def commit(self, org_id: str, hold_id: str) -> HoldResult:
        return await self._call(self._url(org_id, hold_id, "commit"), None, {})

    async def release(self, org_id: str, hold_id: str) -> HoldResult:
        return await self._call(self._url(org_id, hold_id, "release"), None, {})

    async def _call(self, url: str, body: dict[str, Any] | None, headers: dict[str, str]) -> HoldResult:
        try:
            r = await self.client.post(url, json=body, headers=self.headers | headers)
        except httpx.HTTPError as exc:  # refused, reset, timed out: nothing is known of the answer
            raise ServiceUnavailable(f"the billing API at {self.base} did not answer: {exc!r}") from exc
        if r.is_success:
            try:
                data = r.json()
                return HoldResult(org_id=data["org_id"], idempotency_key=data["hold_id"],
                                  cost=Decimal(data["cost"]), available=Decimal(data["available"]),
                                  replayed=bool(data["replayed"]), status=data["status"],
                                  concurrency_limit=int(data["concurrency_limit"]),
                                  concurrency_open=int(data["concurrency_open"]))
            except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
                raise ServiceUnavailable(f"the billing API answered {url} with an unreadable hold: "
                                         f"{r.text[:200]!r}") from exc
        error = error_from_problem(r)
        if isinstance(error, NotAuthenticated | Forbidden | UnknownApiKey):
            # About this service's own key, not the request: the caller hears that metering is unavailable.
            raise ServiceUnavailable(f"the billing API refused this service's API key: {error.message}") from error
        raise error


def error_from_problem(r: httpx.Response) -> BillingError:
    """The typed error an RFC 9457 problem names (its `type` ends with the class name; its members are the
    error's fields), by the one registry models/errors.ERRORS. An answer that names none (a 5xx, a proxy's page,
    a route this API does not have): ServiceUnavailable, the request cannot be metered."""
    try:
        data = r.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    name = str(data.get("type", "")).rsplit("/", 1)[-1]
    detail = str(data.get("detail") or r.reason_phrase or r.status_code)
    cls = ERRORS.get(name)
    if cls is None:
        return ServiceUnavailable(f"the billing API answered {r.status_code} {name or r.reason_phrase}: {detail}")
    exc = cls.__new__(cls)
    BillingError.__init__(exc, detail)
    fields = error_fields(cls)
    for field, hint in fields.items():
        if field in _PROBLEM_MEMBERS:
            # The RFC's own member (HoldNotOpen.status is not the HTTP status): the API names it with a prefix
            # ("hold_status").
            field_as = next((k for k in data if k.endswith("_" + field) and k not in fields), None)
            value = data.get(field_as) if field_as else None
        else:
            value = data.get(field)
        setattr(exc, field, Decimal(value) if hint is Decimal and value is not None else value)
    return exc


_PROBLEM_MEMBERS = frozenset(("type", "title", "status", "detail", "instance"))  # RFC 9457 section 3.1


# -- the middleware ---------------------------------------------------------------------------------------


class CreditsMiddleware:
    """Meters the requests of `routes` ("POST /v1/search", "/v1/items/{id}" for any method) and those whose
    FastAPI route depends on `charge(...)`. `org` names the organization that pays (None: 401
    NotAuthenticated); `user` the user it meters as (optional)."""

    def __init__(
        self, app: ASGIApp, *, meter: Meter, org: Resolver[str | None], routes: Mapping[str, CostOf] | None = None,
        user: Resolver[str | None] | None = None, settle_deadline: float = SETTLE_DEADLINE,
    ) -> None:
        self.app = app
        self.meter = meter
        self.org = org
        self.user = user
        self.settle_deadline = settle_deadline
        self.routes = [_route(spec, cost) for spec, cost in (routes or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websockets: not metered
            await self.app(scope, receive, send)
            return
        request = _Metered(self, HTTPConnection(scope))
        scope[SCOPE_KEY] = request
        cost = self._cost_of(scope)
        if cost is not None:
            try:
                await request.hold(cost)  # None: its cost function said free, the request passes unmetered
            except BillingError as exc:
                await billing_problem(exc)(scope, receive, send)
                return
        await request.run(self.app, scope, receive, send)

    def _cost_of(self, scope: Scope) -> CostOf | None:
        method, path = scope["method"], scope["path"]
        for methods, pattern, cost in self.routes:
            if (methods is None or method in methods) and (match := pattern.fullmatch(path)):
                # the route's {parameters}, for a cost function to read (conn.path_params), as Starlette's own
                # routing gives them
                scope["path_params"] = {**scope.get("path_params", {}), **match.groupdict()}
                return cost
        return None


def _route(spec: str, cost: CostOf) -> tuple[frozenset[str] | None, re.Pattern[str], CostOf]:
    """"POST /v1/search", "GET|POST /v1/x", "/v1/items/{id}" (one segment), "/files/{rest:path}" (the rest)."""
    method, _, path = spec.strip().rpartition(" ")
    if not path.startswith("/"):
        raise ValueError(f"a metered route is 'METHOD /path' or '/path', got {spec!r}")
    methods = frozenset(m.strip().upper() for m in method.split("|")) if method.strip() else None
    pattern, at = "", 0
    for m in re.finditer(r"\{(\w+)(:path)?\}", path):
        pattern += re.escape(path[at:m.start()]) + f"(?P<{m.group(1)}>{'.*' if m.group(2) else '[^/]+'})"
        at = m.end()
    return methods, re.compile(pattern + re.escape(path[at:])), cost


async def _resolved(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


def _plain(credits: Decimal) -> str:
    """Credits in a header: "49", "0.5" (the ledger's milli-credits without trailing zeros, never "4.9E+1")."""
    return f"{credits.normalize():f}"


class _Metered:
    """One request's metering: its hold, the answer's status, and the settlement (commit or release) that
    happens exactly once whatever the app does."""

    def __init__(self, mw: CreditsMiddleware, conn: HTTPConnection) -> None:
        self.mw = mw
        self.conn = conn
        self.org_id = ""
        self.hold_id = ""
        self.held: HoldResult | None = None
        self.refusal: BillingError | None = None   # a refused hold of the FastAPI form: answered by us
        self.waived = False        # the handler said this answer is not charged (seed 001's "success": false)
        self.status: int | None = None
        self.disconnected = False
        self.settled = False
        self.settle_error: Exception | None = None  # why the settlement did not answer, if it did not
        self.answered = False      # a message reached the server: the refusal problem can no longer be sent

    async def hold(self, cost_of: CostOf) -> HoldResult | None:
        if self.held is not None:
            raise RuntimeError(f"{self.conn.url.path}: a request is metered once; it already holds "
                               f"{self.held.cost} credits (a route in both `routes` and charge()?)")
        try:
            cost = cost_of if isinstance(cost_of, Cost) else await _resolved(cost_of(self.conn))
            if cost is None:
                return None
            org_id = await _resolved(self.mw.org(self.conn))
            if not org_id:
                raise NotAuthenticated(f"{self.conn.url.path} costs credits: no organization for this request")
            user_id = await _resolved(self.mw.user(self.conn)) if self.mw.user is not None else None
            key = self.conn.headers.get(IDEMPOTENCY_KEY.decode())
            self.org_id, self.hold_id = org_id, key or uuid.uuid4().hex
            held = await self._hold(cost, user_id)
        except BillingError as exc:
            self.refusal = exc
            raise
        self.held = held
        return held

    async def _hold(self, cost: Cost, user_id: str | None) -> HoldResult:
        try:
            held = await self.mw.meter.hold(self.org_id, self.hold_id, cost, user_id=user_id)
        except HoldNotOpen as exc:  # the key's hold was settled: its request was answered before
            raise self._key_taken(exc.status) from None
        except BillingError as exc:
            if exc.retryable:  # not answered: the hold may exist; give its credits and slot back now
                await self._settle_quietly(commit=False)
            raise
        except Exception as exc:
            log.exception("credits: the hold of %s for %s failed", self.hold_id, self.org_id)
            await self._settle_quietly(commit=False)
            raise ServiceUnavailable(f"credits could not be held: {exc!r}") from exc
        if held.replayed:
            # The key's hold belongs to a request in flight: the same credits and concurrency slot would serve
            # two answers. Refused; the first request's hold is untouched.
            raise self._key_taken("in flight")
        return held

    def _key_taken(self, state: str) -> IdempotencyConflict:
        """A request under an Idempotency-Key whose hold is another request's (in flight, or answered:
        committed, released, expired): 409, as the API answers a key used for another request."""
        conflict = IdempotencyConflict(self.org_id, self.hold_id)
        BillingError.__init__(conflict, f"{self.org_id}: Idempotency-Key {self.hold_id!r} belongs to a request "
                                        f"{'already ' if state == 'in flight' else 'already answered: '}{state}")
        return conflict

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message | None = None  # held back until the first body message: settle first if it is the last

        async def receive_seen() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
            return message

        async def send_settled(message: Message) -> None:
            nonlocal start
            if self.refusal is not None:
                return  # the app's answer to a refused charge() (its 500, its handler's): ours replaces it
            if self.held is None or self.settled:
                self.answered = True
                await send(message)
                return
            kind = message["type"]
            if kind == "http.response.start":
                self.status = int(message["status"])
                start = message
                return
            if kind not in _BODY:  # trailers, a test client's debug message: not the answer's end
                await send(message)
                return
            final = not message.get("more_body", False)
            if start is not None:
                # The whole answer in one message (the common case): settle, then say exactly what it did.
                # A stream: say what settling will do (the hold's numbers) and settle before its last message.
                result = await self._settle() if final else None
                first, start = start, None
                await send({**first, "headers": [*first.get("headers", []), *self._headers(result)]})
                self.answered = True
            elif final:
                await self._settle()
            await send(message)

        try:
            await app(scope, receive_seen, send_settled)
        except BaseException as exc:
            if self.refusal is not None and not self.answered and isinstance(exc, Exception):
                await billing_problem(self.refusal)(scope, receive, send)
                if _caused_by(exc, self.refusal):
                    return
            # The handler failed (or the client went away and the server cancelled it): release, re-raise.
            await self._settle_quietly(commit=False)
            raise
        if self.refusal is not None and not self.answered:
            await billing_problem(self.refusal)(scope, receive, send)
            return
        await self._settle_quietly(commit=False)  # no complete answer was sent: nothing is charged
        if start is not None:  # an app that ended after its status line: pass on what it sent
            await send({**start, "headers": [*start.get("headers", []), *self._headers(None)]})

    def _commits(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.waived and not self.disconnected

    async def _settle(self) -> HoldResult | None:
        return await self._settle_quietly(commit=self._commits())

    async def _settle_quietly(self, *, commit: bool) -> HoldResult | None:
        """Commit or release once, shielded from cancellation, within the settle deadline. A failure is logged,
        never raised: the answer is the handler's. The hold's TTL releases what could not be settled."""
        if self.settled or not self.hold_id:
            return None
        self.settled = True
        op = self.mw.meter.commit if commit else self.mw.meter.release
        what = "commit" if commit else "release"
        try:
            with anyio.fail_after(self.mw.settle_deadline, shield=True):
                for attempt in range(1, SETTLE_ATTEMPTS + 1):
                    try:
                        return await op(self.org_id, self.hold_id)
                    except BillingError as exc:
                        if not exc.retryable or attempt == SETTLE_ATTEMPTS:
                            raise
                    except Exception:
                        if attempt == SETTLE_ATTEMPTS:
                            raise
                    await anyio.sleep(0.1 * attempt)
        except Exception as exc:
            self.settle_error = exc
            if self.held is not None:  # a hold that never was (refused, in doubt) needs no word
                log.exception("credits: %s of hold %s of %s failed; its TTL releases it", what, self.hold_id,
                              self.org_id)
        return None

    def _headers(self, settled: HoldResult | None) -> list[tuple[bytes, bytes]]:
        """The answer's credit and concurrency headers as of the end of this request: from the settlement
        when it is known, else foretold from the hold (a commit charges the held cost, a release gives it
        back, and either frees this request's concurrency slot)."""
        held = self.held
        assert held is not None
        commit = self._commits()
        if isinstance(self.settle_error, HoldNotOpen):  # settled otherwise (or expired): that is certain
            commit = self.settle_error.status == "committed"
        if settled is not None:
            cost = settled.cost if commit else Decimal(0)
            remaining, limit, open_ = settled.available, settled.concurrency_limit, settled.concurrency_open
        else:
            cost = held.cost if commit else Decimal(0)
            remaining = held.available if commit else held.available + held.cost
            limit, open_ = held.concurrency_limit, held.concurrency_open - 1
        return [(COST.lower().encode(), _plain(cost).encode()),
                (REMAINING.lower().encode(), _plain(remaining).encode()),
                (CONCURRENCY_LIMIT.lower().encode(), str(limit).encode()),
                (CONCURRENCY_REMAINING.lower().encode(), str(max(limit - open_, 0)).encode())]


def _caused_by(exc: BaseException, target: BaseException) -> bool:
    """`exc` is `target`, or a group (a task group's) of nothing but it."""
    if exc is target:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_caused_by(e, target) for e in exc.exceptions)
    return False


# -- the FastAPI form --------------------------------------------------------------------------------------


def _metered(conn: HTTPConnection) -> _Metered:
    request = conn.scope.get(SCOPE_KEY)
    if not isinstance(request, _Metered):
        raise RuntimeError("charge() needs CreditsMiddleware around the app (app.add_middleware(CreditsMiddleware, "
                           "meter=..., org=...))")
    return request


def charge(cost: CostOf) -> Callable[[Request], Awaitable[HoldResult | None]]:
    """A FastAPI dependency: hold `cost` before the route's handler runs (its path parameters are in the
    request the resolvers read). It yields the hold (None when a cost function said the request is free);
    a refusal is answered as a problem by the middleware, the handler does not run."""

    async def holding(request: Request) -> HoldResult | None:
        return await _metered(request).hold(cost)

    return holding


def hold_of(conn: HTTPConnection | Scope) -> HoldResult | None:
    """The request's hold (its cost, the balance it leaves), None when it is not metered."""
    scope = conn.scope if isinstance(conn, HTTPConnection) else conn
    request = scope.get(SCOPE_KEY)
    return request.held if isinstance(request, _Metered) else None


def waive(conn: HTTPConnection | Scope) -> None:
    """Release instead of commit even if the answer is 2xx: a request that ended without a result the
    caller pays for (seed 001: "success": false is not charged)."""
    scope = conn.scope if isinstance(conn, HTTPConnection) else conn
    request = scope.get(SCOPE_KEY)
    if isinstance(request, _Metered):
        request.waived = True


__all__ = ["CONCURRENCY_LIMIT", "CONCURRENCY_REMAINING", "COST", "PROBLEM_JSON", "REMAINING", "ApiMeter", "Cost",
           "CreditsMiddleware", "LedgerMeter", "Meter", "charge", "error_from_problem", "hold_of", "waive"]
