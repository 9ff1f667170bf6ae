"""Every business key and workflow id, built here and nowhere else (docs/keys.md).

A business key names one effect exactly once: it is the ledger's unique key, the payments row's key, the
Stripe Idempotency-Key and the outbox key. Keys are built from fields joined with ':'. Organization ids
and caller keys may contain ':' themselves, so each free-form field is written with ':' as '%3A': '%' is
not allowed in ids (models/checks.py), so the escaping is reversible and never ambiguous, and an id
without ':' is written as it is, which keeps every key and workflow id already in use unchanged.
Timestamps are written 2026-01-15T09:30:00Z (seconds, UTC). Pure: workflows call it too.
"""

from __future__ import annotations

from datetime import UTC, datetime


def _field(value: str) -> str:
    """A free-form field (organization id, caller key) as it appears in a key."""
    return value.replace(":", "%3A")


def stamp(t: datetime) -> str:
    """A timestamp as business keys spell it, in UTC whatever its time zone: 2026-01-15T09:30:00Z (a time
    read from a database session in another zone names the same instant, so the same key)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(t: datetime | None) -> str:
    """A date as summaries spell it (not a key part): 2026-01-15."""
    return "" if t is None else t.strftime("%Y-%m-%d")


# -- business keys -------------------------------------------------------------------------------------


def period_key(org_id: str, at: datetime, purpose: str) -> str:
    """An effect of the period (or moment) starting `at`: {org}:{stamp}:{purpose}. `purpose` is one of
    the engine's own words (renewal, credits, upgrade:pro, auto_recharge:2, ...), never caller input."""
    return f"{_field(org_id)}:{stamp(at)}:{purpose}"


def recharge_key(org_id: str, window_start: datetime, attempt: int) -> str:
    """The n-th auto-recharge charge of a spending window: {org}:{window_start}:auto_recharge:{n}."""
    return period_key(org_id, window_start, f"auto_recharge:{attempt}")


def pack_key(org_id: str, idempotency_key: str) -> str:
    """A pack bought by hand under the caller's key: {org}:pack:{key}."""
    return f"{_field(org_id)}:pack:{_field(idempotency_key)}"


def invoice_payment_key(payment_key: str, idempotency_key: str) -> str:
    """One attempt to pay an open invoice by card, under the caller's key: {payment_key}:pay:{key}. Its own
    PaymentIntent key: after a decline, another attempt (another key) may charge a new card."""
    return f"{payment_key}:pay:{_field(idempotency_key)}"


def open_wallet_key(org_id: str, plan: str) -> str:
    """Opening a free organization's wallet: {org}:open:{plan}."""
    return f"{_field(org_id)}:open:{plan}"


def alert_key(alert_id: int) -> str:
    """An alert's email: alert:{id} (the alerts table's serial id is unique across organizations)."""
    return f"alert:{alert_id}"


def step_key(key: str, step: str) -> str:
    """A follow-up effect of a keyed effect (its receipt, its failure notice): {key}:{step}."""
    return f"{key}:{step}"


# -- workflow ids --------------------------------------------------------------------------------------


def subscription_workflow_id(org_id: str) -> str:
    return f"subscription:{_field(org_id)}"


def recharge_workflow_id(org_id: str) -> str:
    return f"auto-recharge:{_field(org_id)}"


def pack_workflow_id(org_id: str, idempotency_key: str) -> str:
    return f"pack:{_field(org_id)}:{_field(idempotency_key)}"
