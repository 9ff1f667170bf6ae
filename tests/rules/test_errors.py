"""One error vocabulary: every BillingError crosses the Temporal boundary and comes back the same class,
with the same fields, whatever path it takes (models/errors.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

from models.errors import (
    ERRORS,
    NON_RETRYABLE,
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
    from_failure,
    to_application_error,
)
from temporal_client import DATA_CONVERTER

EXAMPLES: list[BillingError] = [
    BillingError("something"),
    InvalidRequest("bad"),
    UnknownOrganization("acme"),
    InsufficientCredits("acme", Decimal("17.000"), Decimal("3.500")),
    TierNotAvailable("acme", "ultra", "starter"),
    UserLimitExceeded("acme", "u1", Decimal("10"), Decimal("9.5"), Decimal("1")),
    QuotaExceeded("acme", "enrichments", Decimal("10"), Decimal("9"), Decimal("2")),
    UsageGuardPaused("acme", "ai_chat"),
    ConcurrencyLimitExceeded("acme", 5),
    IdempotencyConflict("acme", "k-1"),
    HoldNotOpen("acme", "k-2", "expired"),
    PaymentDeclined("declined", "insufficient_funds"),
    PaymentProviderRefused("Stripe refused the engine's credentials", "authentication"),
    ServiceUnavailable("Stripe is not configured"),
    UnknownApiKey("key_0123456789abcdef"),
    UnknownWebhookEndpoint("whe_0123456789abcdef"),
    UnknownInvoice("acme", "INV-2026-000042"),
    NotAuthenticated("this API key is unknown or revoked"),
    Forbidden("a member key cannot do this; it needs a platform or admin key"),
]


def test_the_registry_lists_every_error_class_once() -> None:
    assert {type(e) for e in EXAMPLES} == set(ERRORS.values())
    assert NON_RETRYABLE == sorted(set(ERRORS) - {"ServiceUnavailable"})  # a retry may find the part back


async def _through_temporal(err: ApplicationError) -> BaseException:
    """Encode the failure as Temporal carries it (the project's data converter) and decode it again, wrapped
    as a caller sees it: an update failure caused by an activity failure."""
    failure = Failure()
    await DATA_CONVERTER.encode_failure(err, failure)
    decoded = await DATA_CONVERTER.decode_failure(failure)
    activity = ActivityError("activity failed", scheduled_event_id=1, started_event_id=2, identity="w",
                             activity_type="stripe.charge", activity_id="1",
                             retry_state=RetryState.NON_RETRYABLE_FAILURE)
    activity.__cause__ = decoded
    update = WorkflowUpdateFailedError(activity)
    update.__cause__ = activity
    return update


@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda e: type(e).__name__)
async def test_every_error_comes_back_as_the_same_class_with_its_fields(exc: BillingError) -> None:
    app = to_application_error(exc)
    assert (app.type, app.non_retryable) == (type(exc).__name__, not isinstance(exc, ServiceUnavailable))
    back = from_failure(await _through_temporal(app))
    assert type(back) is type(exc)
    assert back is not None and back.message == exc.message
    assert vars(back) == vars(exc)


async def test_a_decline_recorded_in_the_old_shape_still_reads_its_code() -> None:
    old = ApplicationError("declined", "card_declined", type="PaymentDeclined", non_retryable=True)
    back = from_failure(await _through_temporal(old))
    assert isinstance(back, PaymentDeclined) and back.decline_code == "card_declined"


async def test_a_failure_that_is_not_ours_is_left_alone() -> None:
    assert from_failure(await _through_temporal(ApplicationError("boom", type="PaymentStateUnexpected"))) is None
    assert from_failure(RuntimeError("x")) is None
