"""The HTTP API (DESIGN.md section 9, docs/api.md): every BillingClient operation under `/v1`.

FastAPI, not Litestar: the engine already speaks pydantic v2 (Temporal's payload converter), so the request
and response models that validate are the ones that generate the OpenAPI 3.1 spec (committed as
docs/openapi.json, compared with the code by a test); its dependency injection carries the key's role to each
route in one line; and schemathesis and every peer's tooling know it best. Speed is the ASGI server's and the
database's: bench/http.py measures a debit against the same server's no-op authenticated endpoint.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from api import problems
from api.keys import ApiKeys
from api.routes import metering
from api.schemas import Whoami
from api.service import Caller, Service
from starter import BillingClient

ROUTERS: list[APIRouter] = [metering.router]

_meta = APIRouter(tags=["meta"])


@_meta.get("/v1/whoami", response_model=Whoami)
async def whoami(key: Caller) -> Whoami:
    """The calling key (no other work: bench/http.py's baseline of an authenticated request)."""
    return Whoami(key_id=key.id, role=key.role, org_id=key.org_id, user_id=key.user_id)


def create_app(billing: BillingClient, keys: ApiKeys | None = None) -> FastAPI:
    app = FastAPI(title="Billing engine API", version="1", openapi_url="/v1/openapi.json", docs_url="/v1/docs",
                  redoc_url=None)
    app.state.service = Service(billing, keys or ApiKeys(billing.ledger.pool))
    problems.install(app)
    app.include_router(_meta)
    for router in ROUTERS:
        app.include_router(router)
    return app
