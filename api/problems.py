"""Errors as the API answers them: RFC 9457 `application/problem+json` whose `type` ends with the
BillingError class name (models/errors.py is the one registry), with the error's typed fields as members.
The status of each error is said once, here (DESIGN.md section 9)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import (
    BillingError,
    ConcurrencyLimitExceeded,
    Forbidden,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotAuthenticated,
    PaymentDeclined,
    PaymentProviderRefused,
    QuotaExceeded,
    ServiceUnavailable,
    TierNotAvailable,
    UnknownApiKey,
    UnknownInvoice,
    UnknownOrganization,
    UnknownWebhookEndpoint,
    UsageGuardPaused,
    UserLimitExceeded,
    error_fields,
)

PROBLEM_BASE = "https://billing-engine.dev/problems/"
PROBLEM_JSON = "application/problem+json"

# Most specific first: the first class an error is an instance of gives its status.
STATUS: list[tuple[type[BillingError], int]] = [
    (UnknownOrganization, 404),
    (UnknownApiKey, 404),
    (UnknownWebhookEndpoint, 404),
    (UnknownInvoice, 404),
    (NotAuthenticated, 401),
    (Forbidden, 403),
    (InsufficientCredits, 403),   # seed 001's "403 Insufficient Credits"
    (TierNotAvailable, 403),
    (UserLimitExceeded, 403),
    (QuotaExceeded, 403),         # a plan's hard quota, as a user's limit
    (ConcurrencyLimitExceeded, 429),
    (UsageGuardPaused, 429),
    (IdempotencyConflict, 409),
    (HoldNotOpen, 409),
    (PaymentDeclined, 402),
    (PaymentProviderRefused, 502),  # Stripe refused the engine's own request: not the caller's doing
    (ServiceUnavailable, 503),
    (InvalidRequest, 422),
    (BillingError, 400),
]


def status_of(exc: BillingError) -> int:
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def problem(status: int, type_name: str, detail: str, /, **members: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_BASE + type_name, "title": type_name, "status": status,
                            "detail": detail}
    body |= {k: str(v) if isinstance(v, Decimal) else v for k, v in members.items()}
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# An error field named like an RFC 9457 member is renamed, not lost or clashing (HoldNotOpen.status is the
# hold's: "committed", "released", "expired").
_RENAMED = {"type": "error_type", "title": "error_title", "status": "hold_status", "detail": "error_detail",
            "instance": "error_instance"}


def billing_problem(exc: BillingError) -> JSONResponse:
    members = {_RENAMED.get(name, name): getattr(exc, name, None) for name in error_fields(type(exc))}
    return problem(status_of(exc), type(exc).__name__, exc.message, **members)


async def _billing(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BillingError)
    return billing_problem(exc)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "the request is not valid"
    return problem(422, "InvalidRequest", detail, errors=errors)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return problem(exc.status_code, name, str(exc.detail))


def install(app: FastAPI) -> None:
    app.add_exception_handler(BillingError, _billing)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
