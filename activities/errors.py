"""How our typed errors cross into Temporal: a BillingError raised by an activity is a business answer,
not a transient failure, so it becomes a non-retryable ApplicationError whose type is the error's class
name (the workflow and BillingClient map it back)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from models.errors import BillingError

P = ParamSpec("P")
R = TypeVar("R")


def typed_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except BillingError as exc:
            raise ApplicationError(exc.message, type=type(exc).__name__, non_retryable=True) from exc

    return wrapper
