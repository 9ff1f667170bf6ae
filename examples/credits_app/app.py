"""A platform team's own API, metered by the credits middleware (api/middleware.py): a search that costs an
`insight` (10 credits at the fast tier), the same search streamed, and an enrichment whose route declares its
cost itself (the FastAPI form). Run it: `python -m examples.credits_app` (README.md).

The search backend is an argument (`create_app(meter, search=...)`), as a real app's client of its provider
would be: the tests give one that fails, blocks or finds nothing, to drive every way an answer can end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from api.middleware import Cost, CreditsMiddleware, Meter, charge, waive
from models.ledger_types import HoldResult

SEARCH = Cost("insight", tier="fast")        # 10 credits
ENRICH = Cost("lead_enrichment")             # 5 credits


class UpstreamDown(Exception):
    """The search provider failed: the answer is 502, nothing is charged."""


# A search backend: the results for a query; LookupError when there are none (404).
Search = Callable[[str], Awaitable[list[str]]]


async def demo_search(q: str) -> list[str]:
    if q == "nothing":
        raise LookupError(q)
    return [f"{q}: result {i}" for i in range(1, 4)]


def organization(conn: HTTPConnection) -> str | None:
    """Who pays: here the X-Org-Id header, or the route's {org_id} (the FastAPI form sees path parameters).
    A real app reads it from its own authentication."""
    return conn.path_params.get("org_id") or conn.headers.get("x-org-id")


def user(conn: HTTPConnection) -> str | None:
    return conn.headers.get("x-user-id")


class SearchIn(BaseModel):
    q: str
    limit: int = 3


def create_app(meter: Meter, *, search: Search = demo_search) -> FastAPI:
    app = FastAPI(title="Credits middleware sample")

    @app.post("/v1/search")
    async def run_search(body: SearchIn, request: Request) -> dict[str, Any]:
        if not body.q.strip():
            raise HTTPException(400, "q is empty")
        try:
            results = await search(body.q)
        except LookupError:
            raise HTTPException(404, f"nothing found for {body.q!r}") from None
        except UpstreamDown as exc:
            raise HTTPException(502, f"the search provider failed: {exc}") from None
        if not results:
            waive(request)  # seed 001: an answer with "success": false is not charged
            return {"success": False, "results": []}
        return {"success": True, "results": results[: body.limit]}

    @app.get("/v1/search/stream")
    async def stream_search(q: str) -> StreamingResponse:
        results = await search(q)

        async def lines() -> AsyncIterator[str]:
            for line in results:
                yield line + "\n"

        return StreamingResponse(lines(), media_type="text/plain")

    @app.post("/v1/orgs/{org_id}/enrich")
    async def enrich(org_id: str, lead: dict[str, str],
                     held: Annotated[HoldResult | None, Depends(charge(ENRICH))]) -> dict[str, Any]:
        assert held is not None
        return {"org_id": org_id, "lead": lead | {"company": "Acme"}, "reserved": str(held.cost)}

    @app.get("/v1/health")
    async def health() -> dict[str, str]:  # not metered: no cost, no headers
        return {"status": "ok"}

    # Routes declared here; /enrich declares its own cost (charge above). An unhandled error reaches the
    # middleware before FastAPI's 500: released, then re-raised.
    app.add_middleware(CreditsMiddleware, meter=meter, org=organization, user=user,
                       routes={"POST /v1/search": SEARCH, "GET /v1/search/stream": SEARCH})
    return app
