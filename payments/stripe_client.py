"""The Stripe client (async, on aiohttp, without retries of its own) and small helpers over Stripe objects."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import stripe
from stripe import StripeClient

from payments.ceiling import CeilingHTTPClient, StripeCeiling
from settings import InvalidSetting, Settings

# The key a fake Stripe (localstripe) is reached with: it accepts any key, the SDK wants one.
DUMMY_API_KEY = "sk_test_localstripe"


def stripe_client(*, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0,
                  ceiling: StripeCeiling | None = None) -> StripeClient:
    """A StripeClient on aiohttp with no retries of its own (Temporal owns retries). `api_key`: a real
    key (test or live); else `base_url` is a fake Stripe (localstripe) reached with a dummy key. With a
    `ceiling`, every request takes a slot of it first (payments/ceiling.py); `close_stripe_client` closes it."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    http = (CeilingHTTPClient(ceiling, timeout=client_timeout) if ceiling is not None
            else stripe.AIOHTTPClient(timeout=client_timeout))
    if api_key:
        return stripe.StripeClient(api_key, http_client=http, max_network_retries=0)
    if not base_url:
        raise ValueError("a Stripe client needs STRIPE_API_KEY or the URL of a fake Stripe (localstripe)")
    return stripe.StripeClient(DUMMY_API_KEY, http_client=http, max_network_retries=0,
                               base_addresses={"api": base_url})


def stripe_client_from_settings(settings: Settings, localstripe_url: str | None = None,
                                database_url: str | None = None, *, timeout: float = 30.0) -> StripeClient:
    """STRIPE_API_KEY when set, else the localstripe at `localstripe_url` (see stack/stripe_server.py).
    With BILLING_STRIPE_MAX_RPS, under the fleet's ceiling, counted in the database at `database_url`
    (default: DATABASE_URL); without it, no ceiling and no database call. `timeout`: per request, seconds."""
    ceiling = None
    if settings.stripe_max_rps is not None:
        url = database_url or settings.database_url
        if not url:
            raise InvalidSetting("BILLING_STRIPE_MAX_RPS is counted in PostgreSQL, which every worker shares: "
                                 "it needs the database (DATABASE_URL)")
        ceiling = StripeCeiling(url, settings.stripe_max_rps)
    return stripe_client(api_key=settings.stripe_api_key, base_url=localstripe_url, timeout=timeout, ceiling=ceiling)


async def close_stripe_client(client: StripeClient) -> None:
    """Close the client's aiohttp session (the SDK has no public close)."""
    http = getattr(getattr(client, "_requestor", None), "_client", None)
    if isinstance(http, stripe.AIOHTTPClient):
        await http.close_async()  # type: ignore[no-untyped-call]


def stripe_idempotency_key(key: str) -> str:
    """The business key as Stripe's Idempotency-Key: as is up to Stripe's 255 characters, else a digest
    (org ids and caller keys may each be 200 characters long)."""
    return key if len(key) <= 255 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def metadata_value(obj: object, name: str) -> str | None:
    """A metadata value of a Stripe object (StripeObjects are not dicts: no .get)."""
    metadata: Any = getattr(obj, "metadata", None)
    value = metadata.to_dict().get(name) if metadata is not None else None
    return value if isinstance(value, str) else None


def decline_code_of(err: stripe.CardError) -> str:
    body = err.error
    code = (getattr(body, "decline_code", None) if body is not None else None) or err.code
    return str(code or "card_declined")
