"""The typed errors every entry point raises. Each carries a plain message and, where useful, details."""

from __future__ import annotations

from decimal import Decimal


class BillingError(Exception):
    """Base of every error the billing engine raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(BillingError):
    """The request is malformed or not allowed in the current state; nothing was changed."""


class UnknownOrganization(InvalidRequest):
    def __init__(self, org_id: str) -> None:
        super().__init__(f"unknown organization {org_id!r}: it has no wallet yet")
        self.org_id = org_id


class InsufficientCredits(BillingError):
    def __init__(self, org_id: str, cost: Decimal, available: Decimal) -> None:
        super().__init__(f"{org_id}: this costs {cost} credits but only {available} are available")
        self.org_id, self.cost, self.available = org_id, cost, available


class TierNotAvailable(BillingError):
    def __init__(self, org_id: str, tier: str, plan: str) -> None:
        super().__init__(f"{org_id}: model tier {tier!r} is not included in the {plan!r} plan")
        self.org_id, self.tier, self.plan = org_id, tier, plan


class UserLimitExceeded(BillingError):
    def __init__(self, org_id: str, user_id: str, limit: Decimal, used: Decimal, cost: Decimal) -> None:
        super().__init__(
            f"{org_id}: user {user_id!r} has used {used} of their {limit} credits this period; "
            f"this needs {cost} more"
        )
        self.org_id, self.user_id, self.limit, self.used, self.cost = org_id, user_id, limit, used, cost


class UsageGuardPaused(BillingError):
    def __init__(self, org_id: str, action: str) -> None:
        super().__init__(
            f"{org_id}: action {action!r} is paused by its usage guard until an admin resumes it"
        )
        self.org_id, self.action = org_id, action


class ConcurrencyLimitExceeded(BillingError):
    def __init__(self, org_id: str, limit: int) -> None:
        super().__init__(f"{org_id}: {limit} holds are already open, the plan's maximum")
        self.org_id, self.limit = org_id, limit


class IdempotencyConflict(BillingError):
    def __init__(self, org_id: str, key: str) -> None:
        super().__init__(
            f"{org_id}: idempotency key {key!r} was already used for a different request"
        )
        self.org_id, self.key = org_id, key


class HoldNotOpen(BillingError):
    """A commit or release of a hold that is unknown, already settled the other way, or expired."""

    def __init__(self, org_id: str, key: str, status: str) -> None:
        super().__init__(f"{org_id}: hold {key!r} cannot be settled: it is {status}")
        self.org_id, self.key, self.status = org_id, key, status


class PaymentDeclined(BillingError):
    def __init__(self, message: str, decline_code: str | None = None) -> None:
        super().__init__(message)
        self.decline_code = decline_code
