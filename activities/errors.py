"""How our typed errors cross into Temporal: a BillingError raised by an activity is a business answer,
not a transient failure, so it becomes a non-retryable ApplicationError whose type is the error's class
name (the workflow and BillingClient map it back)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from models.errors import BillingError, InvalidRequest

P = ParamSpec("P")
R = TypeVar("R")


def business_error(exc: BillingError, *details: object) -> ApplicationError:
    return ApplicationError(exc.message, *details, type=type(exc).__name__, non_retryable=True)


def invalid(message: str) -> ApplicationError:
    """A bad request: retrying cannot fix it."""
    return business_error(InvalidRequest(message))


def declined(message: str, code: str) -> ApplicationError:
    """A card declined (the decline code is the first detail): the workflow decides what follows."""
    return ApplicationError(message, code, type="PaymentDeclined", non_retryable=True)


def typed_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except BillingError as exc:
            raise business_error(exc) from exc

    return wrapper
