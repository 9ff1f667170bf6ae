"""Activities raise BillingErrors; this turns them into the Temporal boundary's form (models/errors.py
owns the conversion), once, around each activity."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from models.errors import BillingError, InvalidRequest, to_application_error

P = ParamSpec("P")
R = TypeVar("R")


def typed_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except BillingError as exc:
            raise to_application_error(exc) from exc

    return wrapper


def invalid(message: str) -> ApplicationError:
    """A bad request, for adapters that answer Temporal directly (the mailer): retrying cannot fix it."""
    return to_application_error(InvalidRequest(message))
