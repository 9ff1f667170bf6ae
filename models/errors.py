"""The typed errors every entry point raises, in one registry, and their one crossing of the Temporal
boundary each way.

Each error carries a plain message and, where useful, typed fields (declared as class annotations, so
the crossing can restore them). An error raised in an activity or a workflow becomes a non-retryable
`ApplicationError` whose type is the class name and whose one detail holds the fields
(`to_application_error`); the caller gets the same class back from any path (`from_failure`).
"""

from __future__ import annotations

import typing
from decimal import Decimal
from typing import Any, ClassVar

from temporalio.exceptions import ApplicationError


class BillingError(Exception):
    """Base of every error the billing engine raises on purpose."""

    # A business answer: retrying cannot change it. (ServiceUnavailable is the one that a retry may fix.)
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(BillingError):
    """The request is malformed or not allowed in the current state; nothing was changed."""


class UnknownOrganization(InvalidRequest):
    org_id: str

    def __init__(self, org_id: str) -> None:
        super().__init__(f"unknown organization {org_id!r}: it has no wallet yet")
        self.org_id = org_id


class UnknownApiKey(InvalidRequest):
    """An API key id that does not exist, or is beyond the caller's reach (the same answer: 404)."""

    key_id: str

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r} within this key's reach")
        self.key_id = key_id


class UnknownWebhookEndpoint(InvalidRequest):
    """A webhook endpoint id that does not exist, or is beyond the caller's reach (the same answer: 404)."""

    endpoint_id: str

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"no webhook endpoint {endpoint_id!r} within this key's reach")
        self.endpoint_id = endpoint_id


class UnknownInvoice(InvalidRequest):
    """An invoice number the organization does not have (another organization's is the same answer: 404)."""

    org_id: str
    number: str

    def __init__(self, org_id: str, number: str) -> None:
        super().__init__(f"{org_id} has no invoice {number!r}")
        self.org_id = org_id
        self.number = number


class InsufficientCredits(BillingError):
    org_id: str
    cost: Decimal
    available: Decimal

    def __init__(self, org_id: str, cost: Decimal, available: Decimal) -> None:
        super().__init__(f"{org_id}: this costs {cost} credits but only {available} are available")
        self.org_id, self.cost, self.available = org_id, cost, available


class TierNotAvailable(BillingError):
    org_id: str
    tier: str
    plan: str

    def __init__(self, org_id: str, tier: str, plan: str) -> None:
        super().__init__(f"{org_id}: model tier {tier!r} is not included in the {plan!r} plan")
        self.org_id, self.tier, self.plan = org_id, tier, plan


class UserLimitExceeded(BillingError):
    org_id: str
    user_id: str
    limit: Decimal
    used: Decimal
    cost: Decimal

    def __init__(self, org_id: str, user_id: str, limit: Decimal, used: Decimal, cost: Decimal) -> None:
        super().__init__(
            f"{org_id}: user {user_id!r} has used {used} of their {limit} credits this period; "
            f"this needs {cost} more"
        )
        self.org_id, self.user_id, self.limit, self.used, self.cost = org_id, user_id, limit, used, cost


class QuotaExceeded(BillingError):
    """A record past a quota's hard limit (models/quota_types.py): refused whole, nothing counted."""

    org_id: str
    quota: str
    limit: Decimal
    used: Decimal
    quantity: Decimal

    def __init__(self, org_id: str, quota: str, limit: Decimal, used: Decimal, quantity: Decimal) -> None:
        super().__init__(
            f"{org_id}: {used} of the {limit} {quota} of this period are used; {quantity} more would pass the "
            f"plan's limit"
        )
        self.org_id, self.quota, self.limit, self.used, self.quantity = org_id, quota, limit, used, quantity


class UsageGuardPaused(BillingError):
    org_id: str
    action: str

    def __init__(self, org_id: str, action: str) -> None:
        super().__init__(
            f"{org_id}: action {action!r} is paused by its usage guard until an admin resumes it"
        )
        self.org_id, self.action = org_id, action


class ConcurrencyLimitExceeded(BillingError):
    org_id: str
    limit: int

    def __init__(self, org_id: str, limit: int) -> None:
        super().__init__(f"{org_id}: {limit} holds are already open, the plan's maximum")
        self.org_id, self.limit = org_id, limit


class IdempotencyConflict(BillingError):
    org_id: str
    key: str

    def __init__(self, org_id: str, key: str) -> None:
        super().__init__(
            f"{org_id}: idempotency key {key!r} was already used for a different request"
        )
        self.org_id, self.key = org_id, key


class HoldNotOpen(BillingError):
    """A commit or release of a hold that is unknown, already settled the other way, or expired."""

    org_id: str
    key: str
    status: str

    def __init__(self, org_id: str, key: str, status: str) -> None:
        super().__init__(f"{org_id}: hold {key!r} cannot be settled: it is {status}")
        self.org_id, self.key, self.status = org_id, key, status


class ServiceUnavailable(BillingError):
    """A part the call needs is not configured, cannot be reached or did not answer in time; nothing was
    changed. The one typed error a retry may fix."""

    retryable = True


class NotAuthenticated(BillingError):
    """An HTTP request without a valid API key (missing, unknown or revoked): 401."""


class Forbidden(BillingError):
    """The API key's role does not allow this operation on its organization (a member changing the plan, an
    admin creating a platform key): 403. A key never learns of another organization: that answers 404."""


class PaymentProviderRefused(BillingError):
    """Stripe refused the request itself, not the card: the engine's credentials (401, 403) or a request it
    calls invalid (400). Nothing was charged and the same request cannot succeed: an operator fixes the
    cause (a subscription shows it as an incident) and the same key may then be charged."""

    reason: str  # "authentication" or "invalid_request"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PaymentDeclined(BillingError):
    decline_code: str | None

    def __init__(self, message: str, decline_code: str | None = None) -> None:
        super().__init__(message)
        self.decline_code = decline_code


# -- the registry and the Temporal boundary ------------------------------------------------------------

ERRORS: dict[str, type[BillingError]] = {cls.__name__: cls for cls in (
    BillingError, InvalidRequest, UnknownOrganization, UnknownApiKey, UnknownWebhookEndpoint, UnknownInvoice,
    InsufficientCredits, QuotaExceeded,
    TierNotAvailable, UserLimitExceeded, UsageGuardPaused, ConcurrencyLimitExceeded, IdempotencyConflict, HoldNotOpen,
    PaymentDeclined, PaymentProviderRefused, ServiceUnavailable, NotAuthenticated, Forbidden,
)}
# Business answers: retrying cannot change them (Temporal's retry policies list these names).
NON_RETRYABLE: list[str] = sorted(name for name, cls in ERRORS.items() if not cls.retryable)


def error_fields(cls: type[BillingError]) -> dict[str, Any]:
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if name not in ("message", "retryable")}


def to_application_error(exc: BillingError) -> ApplicationError:
    """The error as Temporal carries it: typed by class name, non-retryable unless the class says a retry may
    fix it, its fields as the one detail (Decimals as strings: the payload converter writes JSON)."""
    fields = {name: str(v) if isinstance(v := getattr(exc, name, None), Decimal) else v
              for name in error_fields(type(exc))}
    return ApplicationError(exc.message, fields, type=type(exc).__name__, non_retryable=not exc.retryable)


def _from_application_error(err: ApplicationError) -> BillingError | None:
    cls = ERRORS.get(err.type or "")
    if cls is None:
        return None
    exc = cls.__new__(cls)
    BillingError.__init__(exc, err.message)
    details = err.details
    raw: dict[str, Any] = details[0] if details and isinstance(details[0], dict) else {}
    if cls is PaymentDeclined and details and isinstance(details[0], str):
        raw = {"decline_code": details[0]}  # the shape recorded before this registry (old histories)
    for name, hint in error_fields(cls).items():
        value = raw.get(name)
        setattr(exc, name, Decimal(value) if hint is Decimal and value is not None else value)
    return exc


def from_failure(err: BaseException) -> BillingError | None:
    """The typed error behind a Temporal failure (an update, a workflow, an activity, at any depth of
    causes); None when it is not one of ours."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            found = _from_application_error(cause)
            if found is not None:
                return found
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return None
