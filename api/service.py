"""What every route reaches: the engine (`BillingClient`, the same paths as the SDK) and the API's own
stores, plus the authentication dependency that every `/v1` route takes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.keys import ApiKeys
from models.api_types import ApiKey
from starter import BillingClient


@dataclass
class Service:
    billing: BillingClient
    keys: ApiKeys

    def now(self) -> datetime:
        return self.billing.ledger.clock()  # the engine's clock (the test kit's skipped one in tests)


async def service(request: Request) -> Service:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop that cost 10-20% of a debit's CPU
    svc: Service = request.app.state.service
    return svc


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer bk_...`")


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    """The API key of the request (NotAuthenticated, 401, without a live one)."""
    svc: Service = request.app.state.service
    return await svc.keys.authenticate(credentials.credentials if credentials else None)


Caller = Annotated[ApiKey, Depends(caller)]
Svc = Annotated[Service, Depends(service)]
