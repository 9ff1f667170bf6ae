"""The credits middleware (api/middleware.py) around the sample app (examples/credits_app), metering in-process
through the kit's ledger (LedgerMeter). tests/api/test_middleware_api.py runs the same checks through the HTTP
API (ApiMeter): the tests here take the `meter` fixture, which that module overrides.

A fresh free organization has 50 credits and one concurrent hold; the sample's search costs 10 credits
(`insight` at the fast tier), its enrichment 5.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from api.middleware import ApiMeter, Cost, CreditsMiddleware, LedgerMeter, Meter, error_from_problem
from api.problems import PROBLEM_JSON, billing_problem
from api.server import serving
from examples.credits_app.app import UpstreamDown, create_app, demo_search
from models.errors import (
    BillingError,
    ConcurrencyLimitExceeded,
    HoldNotOpen,
    InsufficientCredits,
    NotAuthenticated,
    ServiceUnavailable,
    UserLimitExceeded,
)
from testkit import TestKit

D = Decimal
HEADERS = ("x-credits-cost", "x-credits-remaining", "x-concurrency-limit", "x-concurrency-remaining")


@pytest.fixture
async def meter(kit: TestKit, org: str) -> AsyncIterator[Meter]:
    yield LedgerMeter(kit.billing)


@pytest.fixture
async def wallet(kit: TestKit, org: str) -> str:
    """`org` with a free wallet: 50 credits today, one hold open at a time."""
    await kit.billing.open_wallet(org)
    return org


def client(app: object, org: str | None = None, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://sample",
                             headers={"X-Org-Id": org} if org else None)


def problem_of(answer: Any) -> Any:
    """An error as the API answers it: billing_problem(exc)'s body, or of the answer given."""
    answer = billing_problem(answer) if isinstance(answer, BillingError) else answer
    return json.loads(bytes(answer.body))


def credit_headers(r: httpx.Response) -> tuple[str | None, ...]:
    return tuple(r.headers.get(h) for h in HEADERS)


async def state(kit: TestKit, org: str) -> tuple[Decimal, Decimal, int]:
    b = await kit.billing.balance(org)
    return b.available, b.held, b.concurrency_open


async def hold_entries(kit: TestKit, org: str) -> list[tuple[str, Decimal]]:
    return [(t.kind, t.credits) for t in await kit.billing.transactions(org) if t.kind in ("hold", "release", "debit")]


class Gate:
    """A search backend that waits until the test lets it answer: a request held open."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def search(self, q: str) -> list[str]:
        self.entered.set()
        await self.go.wait()
        return [q]


async def test_a_2xx_answer_commits_the_cost_once(kit: TestKit, meter: Meter, wallet: str) -> None:
    async with client(create_app(meter), wallet) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    assert credit_headers(r) == ("10", "40", "1", "1")
    assert await state(kit, wallet) == (D(40), D(0), 0)
    assert [(u.key, u.uses, u.credits) for u in await kit.billing.usage(wallet)] == [("insight", 1, D(10))]
    # Held, then the reservation given back as the cost is drawn from today's bucket: charged once.
    assert await hold_entries(kit, wallet) == [("hold", D(-10)), ("release", D(10)), ("debit", D(-10))]


@pytest.mark.parametrize(("q", "status"), [("nothing", 404), ("", 400)])
async def test_a_4xx_answer_releases(kit: TestKit, meter: Meter, wallet: str, q: str, status: int) -> None:
    async with client(create_app(meter), wallet) as http:
        r = await http.post("/v1/search", json={"q": q})
    assert r.status_code == status, r.text
    assert credit_headers(r) == ("0", "50", "1", "1")
    assert await state(kit, wallet) == (D(50), D(0), 0)
    assert await hold_entries(kit, wallet) == [("hold", D(-10)), ("release", D(10))]
    assert await kit.billing.usage(wallet) == []


async def test_a_5xx_answer_releases(kit: TestKit, meter: Meter, wallet: str) -> None:
    async def down(q: str) -> list[str]:
        raise UpstreamDown("503 from the provider")

    async with client(create_app(meter, search=down), wallet) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert r.status_code == 502
    assert credit_headers(r) == ("0", "50", "1", "1")
    assert await state(kit, wallet) == (D(50), D(0), 0)
    assert await hold_entries(kit, wallet) == [("hold", D(-10)), ("release", D(10))]


async def test_an_exception_releases_and_is_raised_again(kit: TestKit, meter: Meter, wallet: str) -> None:
    async def broken(q: str) -> list[str]:
        raise RuntimeError("the handler's own bug")

    async with client(create_app(meter, search=broken), wallet) as http:
        with pytest.raises(RuntimeError, match="the handler's own bug"):
            await http.post("/v1/search", json={"q": "acme"})
    assert await state(kit, wallet) == (D(50), D(0), 0)
    # Served for real, the server answers 500 (FastAPI's, outside the middleware) and nothing is charged.
    async with client(create_app(meter, search=broken), wallet, raise_app_exceptions=False) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert r.status_code == 500
    assert await state(kit, wallet) == (D(50), D(0), 0)
    assert await hold_entries(kit, wallet) == [("hold", D(-10)), ("release", D(10))] * 2


async def test_an_answer_without_a_result_is_not_charged(kit: TestKit, meter: Meter, wallet: str) -> None:
    async def empty(q: str) -> list[str]:
        return []

    async with client(create_app(meter, search=empty), wallet) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert (r.status_code, r.json()["success"]) == (200, False)  # waive(): seed 001's "success": false
    assert credit_headers(r) == ("0", "50", "1", "1")
    assert await state(kit, wallet) == (D(50), D(0), 0)


async def test_out_of_credits_is_the_apis_403_problem(kit: TestKit, meter: Meter, wallet: str) -> None:
    async with client(create_app(meter), wallet) as http:
        for left in (40, 30, 20, 10, 0):
            r = await http.post("/v1/search", json={"q": "acme"})
            assert (r.status_code, r.headers["x-credits-remaining"]) == (200, str(left))
        refused = await http.post("/v1/search", json={"q": "acme"})
        # The FastAPI form is refused the same way, before its handler.
        enrich = await http.post(f"/v1/orgs/{wallet}/enrich", json={"email": "a@acme.test"})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.json() == problem_of(InsufficientCredits(wallet, D("10.000"), D("0.000")))
    assert refused.json()["type"].endswith("/InsufficientCredits")
    assert not any(h in refused.headers for h in HEADERS)
    assert enrich.status_code == 403
    assert enrich.json() == problem_of(InsufficientCredits(wallet, D("5.000"), D("0.000")))
    assert await state(kit, wallet) == (D(0), D(0), 0)


async def test_every_hold_open_is_the_apis_429_problem(kit: TestKit, meter: Meter, wallet: str) -> None:
    gate = Gate()
    async with client(create_app(meter, search=gate.search), wallet) as http:
        first = asyncio.create_task(http.post("/v1/search", json={"q": "slow"}))
        async with asyncio.timeout(60):
            await gate.entered.wait()
        assert await state(kit, wallet) == (D(40), D(10), 1)  # the first request's hold, open
        refused = await http.post("/v1/search", json={"q": "second"})
        gate.go.set()
        r = await first
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == problem_of(ConcurrencyLimitExceeded(wallet, 1))
    assert (r.status_code, credit_headers(r)) == (200, ("10", "40", "1", "1"))
    assert await state(kit, wallet) == (D(40), D(0), 0)


async def test_a_hold_under_the_threshold_starts_the_auto_recharge(kit: TestKit, meter: Meter, org: str) -> None:
    """As BillingClient.hold does: the reservation that leaves the balance under the threshold buys the pack."""
    await kit.billing.subscribe(org, plan="starter", seats=1, email="ops@middleware.test")  # 3,000 credits
    await kit.billing.set_auto_recharge(org, threshold=D(2995), pack="500")
    async with client(create_app(meter), org) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert (r.status_code, credit_headers(r)) == (200, ("10", "2990", "5", "5"))
    await kit.settle()
    assert [c.purpose for c in kit.charges(org)] == ["subscription", "auto_recharge"]
    assert await state(kit, org) == (D(3490), D(0), 0)


async def test_the_idempotency_key_is_the_hold_id(kit: TestKit, meter: Meter, wallet: str) -> None:
    gate = Gate()
    async with client(create_app(meter, search=gate.search), wallet) as http:
        first = asyncio.create_task(http.post("/v1/search", json={"q": "a"}, headers={"Idempotency-Key": "req-1"}))
        async with asyncio.timeout(60):
            await gate.entered.wait()
        # The same key while its request is in flight: one reservation cannot pay for two answers.
        twin = await http.post("/v1/search", json={"q": "a"}, headers={"Idempotency-Key": "req-1"})
        gate.go.set()
        r = await first
        # Again once it was answered: its hold is committed, this request is not run nor charged again.
        again = await http.post("/v1/search", json={"q": "a"}, headers={"Idempotency-Key": "req-1"})
    assert r.status_code == 200
    assert (twin.status_code, twin.json()["type"].rsplit("/", 1)[1]) == (409, "IdempotencyConflict")
    assert "in flight" in twin.json()["detail"]
    assert (again.status_code, again.json()["type"].rsplit("/", 1)[1]) == (409, "IdempotencyConflict")
    assert "already answered: committed" in again.json()["detail"]
    assert {t.ref for t in await kit.billing.transactions(wallet) if t.kind == "hold"} == {"hold:req-1"}
    assert await state(kit, wallet) == (D(40), D(0), 0)


async def test_the_fastapi_form_holds_before_the_handler(kit: TestKit, meter: Meter, wallet: str) -> None:
    async with client(create_app(meter)) as http:  # the organization from the path, no header
        r = await http.post(f"/v1/orgs/{wallet}/enrich", json={"email": "a@acme.test"})
        ghost = await http.post("/v1/orgs/no-such-org/enrich", json={"email": "a@acme.test"})
        bad = await http.post(f"/v1/orgs/{wallet}/enrich", json={"email": 3})  # FastAPI's 422, released
    assert r.status_code == 200, r.text
    assert (r.json()["reserved"], credit_headers(r)) == ("5.000", ("5", "45", "1", "1"))
    assert (ghost.status_code, ghost.json()["type"].rsplit("/", 1)[1]) == (404, "UnknownOrganization")
    assert (bad.status_code, credit_headers(bad)) == (422, ("0", "45", "1", "1"))
    assert await state(kit, wallet) == (D(45), D(0), 0)


async def test_unmetered_routes_and_requests_without_an_organization(kit: TestKit, meter: Meter,
                                                                     wallet: str) -> None:
    async with client(create_app(meter)) as http:
        health = await http.get("/v1/health")
        anonymous = await http.post("/v1/search", json={"q": "acme"})
    assert health.status_code == 200 and not any(h in health.headers for h in HEADERS)
    assert anonymous.status_code == 401
    assert anonymous.json() == problem_of(
        NotAuthenticated("/v1/search costs credits: no organization for this request"))
    assert await state(kit, wallet) == (D(50), D(0), 0)


async def test_a_failed_commit_keeps_the_handlers_answer(kit: TestKit, meter: Meter, wallet: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The request's hold is released behind the middleware's back while the handler works (as its TTL would
    when the handler outlives it): the commit is refused, logged, and the answer still goes out whole."""
    async def search(q: str) -> list[str]:
        await kit.billing.ledger.release(wallet, "released-early")
        return [q]

    with caplog.at_level(logging.ERROR, logger="api.middleware"):
        async with client(create_app(meter, search=search), wallet) as http:
            r = await http.post("/v1/search", json={"q": "acme"}, headers={"Idempotency-Key": "released-early"})
    assert r.status_code == 200 and r.json()["results"] == ["acme"]
    assert credit_headers(r) == ("0", "50", "1", "1")  # the refusal says it: not charged
    assert "commit of hold released-early" in caplog.text and "its TTL releases it" in caplog.text
    assert await state(kit, wallet) == (D(50), D(0), 0)


async def test_a_stream_over_http_settles_before_its_last_chunk(kit: TestKit, meter: Meter, wallet: str) -> None:
    """Served by uvicorn: the headers leave before the body, so they say what settling will do; the hold is
    settled before the last chunk, so a client that has read the answer finds its slot free."""
    async with serving(create_app(meter), port=0) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream("GET", "/v1/search/stream", params={"q": "acme"}, headers={"X-Org-Id": wallet}) as r:
            body = (await r.aread()).decode()
        assert (r.status_code, credit_headers(r)) == (200, ("10", "40", "1", "1"))
        assert body == "".join(f"acme: result {i}\n" for i in (1, 2, 3))
        assert await state(kit, wallet) == (D(40), D(0), 0)
        nothing = await http.get("/v1/search/stream", params={"q": "nothing"}, headers={"X-Org-Id": wallet})
        assert nothing.status_code == 500  # the sample does not map LookupError on this route: released
    assert await state(kit, wallet) == (D(40), D(0), 0)


class Streamer:
    """A bare ASGI app (no framework): one line, then it waits for the client to go away."""

    def __init__(self) -> None:
        self.streaming = asyncio.Event()
        self.gone = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first line\n", "more_body": True})
        self.streaming.set()
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()


async def test_a_client_that_leaves_mid_stream_is_not_charged(kit: TestKit, meter: Meter, wallet: str) -> None:
    app = Streamer()
    metered = CreditsMiddleware(app, meter=meter, org=lambda conn: conn.headers.get("x-org-id"),
                                routes={"/feed": Cost("insight", tier="fast")})
    done = asyncio.Event()

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await metered(scope, receive, send)
        finally:
            done.set()  # the middleware has returned: its settlement is behind it

    async with serving(served, port=0) as url:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=url) as http:
            async with http.stream("GET", "/feed", headers={"X-Org-Id": wallet}) as r:
                assert credit_headers(r) == ("10", "40", "1", "1")  # a complete answer would cost this
                async for _ in r.aiter_raw():
                    break  # then the client hangs up
        async with asyncio.timeout(60):
            await app.gone.wait()
            await done.wait()
    assert await state(kit, wallet) == (D(50), D(0), 0)
    assert await hold_entries(kit, wallet) == [("hold", D(-10)), ("release", D(10))]


async def test_a_bare_asgi_app_is_metered(kit: TestKit, meter: Meter, wallet: str) -> None:
    async def hello(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"made"})

    async def org_of(conn: object) -> str:  # resolvers may be async
        return wallet

    metered = CreditsMiddleware(hello, meter=meter, org=org_of,
                                routes={"POST|PUT /v1/things/{id}": Cost("ai_chat", tier="fast", quantity=3)})
    async with client(metered) as http:
        made = await http.put("/v1/things/42")
        other = await http.get("/v1/things/42")          # another method: not metered
        deeper = await http.post("/v1/things/42/parts")  # {id} is one segment: not metered
    assert (made.status_code, made.text, credit_headers(made)) == (201, "made", ("3", "47", "1", "1"))
    assert not any(h in other.headers for h in HEADERS) and not any(h in deeper.headers for h in HEADERS)
    assert await state(kit, wallet) == (D(47), D(0), 0)


async def test_a_cost_read_from_the_request_carries_its_tags_to_the_usage_log(
    kit: TestKit, meter: Meter, wallet: str
) -> None:
    """Seed 004's per-feature log: the resolver tags each use with what the request was about; bad tags are the
    API's problem, answered before the handler runs, with nothing held."""
    served: list[str] = []

    async def enrich(scope: Scope, receive: Receive, send: Send) -> None:
        served.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def cost(conn: Any) -> Cost:
        return Cost("lead_enrichment", tags={"contact": conn.path_params["contact"],
                                             "country": conn.query_params.get("country", "")})

    metered = CreditsMiddleware(enrich, meter=meter, org=lambda conn: wallet,
                                routes={"POST /v1/contacts/{contact}/enrich": cost})
    async with client(metered) as http:
        ok = await http.post("/v1/contacts/c-17/enrich?country=FR")
        bad = await http.post("/v1/contacts/c-18/enrich")   # country "": not a tag value
    assert ok.status_code == 200 and credit_headers(ok)[0] == "5"
    assert bad.status_code in (400, 422) and bad.json()["title"] == "InvalidRequest", bad.text
    assert served == ["/v1/contacts/c-17/enrich"]
    page = await kit.billing.usage_log(wallet)
    assert [(e.action, e.credits, e.tags) for e in page.events] == [
        ("lead_enrichment", D(5), {"contact": "c-17", "country": "FR"})]
    assert await state(kit, wallet) == (D(45), D(0), 0)


async def test_a_billing_api_that_cannot_be_reached_is_a_503(kit: TestKit, wallet: str) -> None:
    """ApiMeter against a port nobody listens on: the request is not served (fail closed), nothing held."""
    async with serving(create_app(LedgerMeter(kit.billing)), port=0) as url:
        dead = url  # a port that was served, closed once the block ends
    ran: list[str] = []

    async def search(q: str) -> list[str]:
        ran.append(q)
        return await demo_search(q)

    async with ApiMeter(dead, "bk_nothing", timeout=5) as meter, client(create_app(meter, search=search),
                                                                         wallet) as http:
        r = await http.post("/v1/search", json={"q": "acme"})
    assert r.status_code == 503
    assert (r.json()["type"].rsplit("/", 1)[1], r.headers["retry-after"]) == ("ServiceUnavailable", "1")
    assert ran == []
    assert await state(kit, wallet) == (D(50), D(0), 0)


def test_a_problem_comes_back_as_its_typed_error() -> None:
    exc = UserLimitExceeded("acme", "u1", D("20"), D("17"), D("5"))
    answer = billing_problem(exc)
    r = httpx.Response(answer.status_code, content=bytes(answer.body), headers={"content-type": PROBLEM_JSON})
    back = error_from_problem(r)
    assert isinstance(back, UserLimitExceeded)
    assert (back.org_id, back.user_id, back.limit, back.used, back.cost, back.message) == (
        "acme", "u1", D("20"), D("17"), D("5"), exc.message)
    # A field named like one of the RFC's members travels prefixed (api/routes/metering.py's HoldNotOpen).
    not_open = {"type": "https://billing-engine.dev/problems/HoldNotOpen", "title": "HoldNotOpen", "status": 409,
                "detail": "acme: hold 'h' cannot be settled: it is expired", "org_id": "acme", "key": "h",
                "hold_status": "expired"}
    back = error_from_problem(httpx.Response(409, json=not_open))
    assert isinstance(back, HoldNotOpen) and (back.org_id, back.key, back.status) == ("acme", "h", "expired")
    # Not a problem this registry names (a proxy's page, a route missing): the request cannot be metered.
    for status, body in ((502, b"<html>bad gateway</html>"), (404, b'{"type": "about:blank", "title": "NotFound"}')):
        assert isinstance(error_from_problem(httpx.Response(status, content=body)), ServiceUnavailable)


