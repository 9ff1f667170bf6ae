"""What a Stripe error that is not a business answer means for a retry (failure model rule 4).

Declines are business answers (`PaymentDeclined`, payments/charges.py). The rest:
- authentication or permission refused (401, 403), a request Stripe calls invalid (400, 404): retrying
  the same request cannot succeed, so the error is non-retryable; the workflow records an incident and an
  operator fixes the key or the data, then asks for a retry;
- rate limited (429): retried after Stripe's Retry-After (capped), not on our own backoff;
- a server error (5xx) or a network error: raised as it is, and Temporal retries it on the activity's
  bounded backoff.
"""

from __future__ import annotations

from datetime import timedelta

import stripe
from temporalio.exceptions import ApplicationError

from models.errors import PaymentProviderRefused

RETRY_AFTER_MAX = timedelta(minutes=1)   # a Retry-After beyond this is read as this: renewals must move on
RETRY_AFTER_DEFAULT = timedelta(seconds=1)


def retry_after(err: stripe.StripeError) -> timedelta:
    """Stripe's Retry-After (seconds), capped; the default when absent or unreadable."""
    raw = (err.headers or {}).get("Retry-After") or (err.headers or {}).get("retry-after")
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        seconds = None
    if seconds is None or seconds != seconds or seconds < 0:  # absent, unreadable or NaN
        return RETRY_AFTER_DEFAULT
    return min(timedelta(seconds=seconds), RETRY_AFTER_MAX)


def permanent(err: stripe.StripeError) -> bool:
    """True when the same request can never succeed (see the module docstring)."""
    return isinstance(err, (stripe.AuthenticationError, stripe.PermissionError, stripe.InvalidRequestError))


def stripe_failure(org_id: str, what: str, err: stripe.StripeError) -> BaseException:
    """The error to raise from an activity for `err`, met while doing `what` for `org_id`."""
    text = err.user_message or str(err) or type(err).__name__
    if isinstance(err, (stripe.AuthenticationError, stripe.PermissionError)):
        return PaymentProviderRefused(f"{org_id}: Stripe refused the engine's credentials ({what}): {text}",
                                      "authentication")
    if isinstance(err, stripe.InvalidRequestError):
        return PaymentProviderRefused(f"{org_id}: Stripe refused {what}: {text}", "invalid_request")
    if isinstance(err, stripe.RateLimitError):
        return ApplicationError(f"{org_id}: Stripe rate-limited {what}", type="StripeRateLimited",
                                next_retry_delay=retry_after(err))
    return err
