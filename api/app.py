"""The HTTP API (docs/api.md): every BillingClient operation under `/v1`.

FastAPI, not Litestar: the engine already speaks pydantic v2 (Temporal's payload converter), so the request
and response models that validate are the ones that generate the OpenAPI 3.1 spec (committed as
docs/openapi.json, compared with the code by a test); its dependency injection carries the key's role to each
route in one line; and schemathesis and every peer's tooling know it best. Speed is the ASGI server's and the
database's: bench/http.py measures a debit against the same server's no-op authenticated endpoint.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from api import openapi, problems
from api.keys import ApiKeys
from api.openapi import problems as problem_responses
from api.routes import (
    contracts,
    insight,
    keys,
    metering,
    purchases,
    quotas,
    reads,
    settings,
    subscriptions,
    webhooks,
)
from api.schemas import Whoami
from api.service import Caller, Service
from starter import BillingClient

ROUTERS: list[APIRouter] = [metering.router, reads.router, insight.router, quotas.router, subscriptions.router,
                            contracts.router, purchases.router, settings.router, keys.router, webhooks.router]

_meta = APIRouter(tags=["meta"])


@_meta.get("/v1/whoami", response_model=Whoami, responses=problem_responses())
async def whoami(key: Caller) -> Whoami:
    """The calling key (no other work: bench/http.py's baseline of an authenticated request)."""
    return Whoami(key_id=key.id, role=key.role, org_id=key.org_id, user_id=key.user_id)


DESCRIPTION = """Every BillingClient operation over HTTP (docs/api.md).

Authenticate with `Authorization: Bearer <key>`. Credits are decimal strings, money integer cents beside a
currency, times UTC RFC 3339. Refusals are RFC 9457 `application/problem+json` whose `type` ends with the error's
name. POSTs take an `Idempotency-Key`: a repeat answers as the first did."""


def build_app() -> FastAPI:
    """The routes, their refusals and the spec, without the engine behind them (api/openapi.py renders its spec)."""
    app = FastAPI(title="Billing engine API", version="1", description=DESCRIPTION, openapi_url="/v1/openapi.json",
                  docs_url="/v1/docs", redoc_url=None)
    problems.install(app)
    openapi.install(app)
    app.include_router(_meta)
    for router in ROUTERS:
        app.include_router(router)
    return app


def create_app(billing: BillingClient, keys: ApiKeys | None = None) -> FastAPI:
    app = build_app()
    app.state.service = Service(billing, keys or ApiKeys(billing.ledger.pool))
    return app
