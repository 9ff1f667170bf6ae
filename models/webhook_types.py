"""Outgoing webhooks (docs/webhooks.md): the event types, each said once, what each carries, and the plain
types of endpoints and deliveries. Pure: no I/O (workflows import it too).

An event is written in the transaction of its cause (migrations/versions/0007_webhooks.sql): by a trigger
where the cause is a row (an alert, a payment's outcome, an invoice issued, due, overdue or paid (0011),
auto-recharge turned off, an overage close (0010)), by the
mailer where the cause is a workflow step whose durable record is its email (mail/mailer.py, with
`email_event` below), and by a workflow's own activity where the cause lives only in workflow state (an
incident opened or resolved, with `incident_event` below). Event data holds no personal data: no email
address, no name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from models.checks import check_email, check_id, shown
from models.errors import InvalidRequest, UnknownWebhookEndpoint
from models.keys import period_key, stamp, step_key

# -- the event types ------------------------------------------------------------------------------------

SUBSCRIPTION_CREATED: Final = "subscription.created"        # trial started, or first period paid
SUBSCRIPTION_CHANGED: Final = "subscription.changed"        # data.change says which (upgraded, resumed...)
SUBSCRIPTION_RENEWED: Final = "subscription.renewed"        # a new period paid (a renewal, a dunning retry)
SUBSCRIPTION_CANCELLED: Final = "subscription.cancelled"    # cancelled: it ends (to Free) at data.effective
SUBSCRIPTION_REVERTED_TO_FREE: Final = "subscription.reverted_to_free"
PAYMENT_SUCCEEDED: Final = "payment.succeeded"
PAYMENT_FAILED: Final = "payment.failed"                    # declined
INVOICE_ISSUED: Final = "invoice.issued"                    # data.status: paid (a charge), open (invoice terms)
INVOICE_DUE: Final = "invoice.due"                          # an open invoice reached its due date unpaid
INVOICE_OVERDUE: Final = "invoice.overdue"                  # a day past it, still unpaid: dunning began
INVOICE_PAID: Final = "invoice.paid"                        # an open invoice was paid (a transfer recorded)
CREDITS_USAGE_80: Final = "credits.usage_80"                # 80% of the period's plan credits used
CREDITS_USAGE_100: Final = "credits.usage_100"              # all of them
CREDITS_LOW_BALANCE: Final = "credits.low_balance"          # the balance fell under the alert's threshold
CREDITS_RUNWAY: Final = "credits.runway"                    # the period's projected use runs past the allocation
QUOTA_USAGE_80: Final = "quota.usage_80"                    # 80% of a quota's limit used this period
QUOTA_USAGE_100: Final = "quota.usage_100"                  # all of it (a soft limit counts on past it)
AUTO_RECHARGE_SUCCEEDED: Final = "auto_recharge.succeeded"
AUTO_RECHARGE_LIMIT_REACHED: Final = "auto_recharge.limit_reached"
AUTO_RECHARGE_DISABLED: Final = "auto_recharge.disabled"
USAGE_GUARD_PAUSED: Final = "usage_guard.paused"
INCIDENT_OPENED: Final = "incident.opened"                  # a workflow step failed for good: retried until done
INCIDENT_RESOLVED: Final = "incident.resolved"              # that step went through (or got a certain answer)
OVERAGE_INVOICED: Final = "overage.invoiced"                # a renewal took the period's overage to its invoice

EVENT_TYPES: Final[tuple[str, ...]] = (
    SUBSCRIPTION_CREATED, SUBSCRIPTION_CHANGED, SUBSCRIPTION_RENEWED, SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_REVERTED_TO_FREE, PAYMENT_SUCCEEDED, PAYMENT_FAILED, INVOICE_ISSUED, INVOICE_DUE, INVOICE_OVERDUE,
    INVOICE_PAID, CREDITS_USAGE_80, CREDITS_USAGE_100, CREDITS_LOW_BALANCE, CREDITS_RUNWAY, QUOTA_USAGE_80,
    QUOTA_USAGE_100, AUTO_RECHARGE_SUCCEEDED, AUTO_RECHARGE_LIMIT_REACHED, AUTO_RECHARGE_DISABLED, USAGE_GUARD_PAUSED,
    INCIDENT_OPENED, INCIDENT_RESOLVED, OVERAGE_INVOICED,
)

# The alerts table's kinds (0001, 0012) and the type each becomes (the trigger in 0007, replaced in 0012, says
# the same).
ALERT_TYPES: Final[dict[str, str]] = {
    "plan_80": CREDITS_USAGE_80,
    "plan_100": CREDITS_USAGE_100,
    "low_balance": CREDITS_LOW_BALANCE,
    "usage_guard_paused": USAGE_GUARD_PAUSED,
    "quota_80": QUOTA_USAGE_80,
    "quota_100": QUOTA_USAGE_100,
    "runway": CREDITS_RUNWAY,
}

# -- events whose cause is an emailed workflow step --------------------------------------------------------

# Per template: the context keys that go into the event's data, renamed where the template's name would
# mislead (reverted_to_free's `plan` is the plan it left). Only these: never the recipient, never free text
# beyond the engine's own words.
_EMAIL_DATA: Final[dict[str, dict[str, str]]] = {
    "trial_started": {"plan": "plan", "seats": "seats", "trial_end": "trial_end"},
    "receipt": {"plan": "plan", "seats": "seats", "invoice_number": "invoice_number", "period_start": "period_start",
                "period_end": "period_end"},
    "upgrade_confirmed": {"old_plan": "old_plan", "plan": "plan", "seats": "seats", "invoice_number": "invoice_number"},
    "downgrade_scheduled": {"plan": "plan", "new_plan": "new_plan", "effective": "effective"},
    "seats_changed": {"plan": "plan", "old_seats": "old_seats", "seats": "seats", "effective": "effective"},
    "cancellation_scheduled": {"plan": "plan", "effective": "effective"},
    "resumed": {"plan": "plan", "period_end": "period_end"},
    "reverted_to_free": {"plan": "previous_plan", "reason": "reason"},
    "auto_recharge_receipt": {"pack": "pack", "packs": "packs", "credits": "credits",
                              "invoice_number": "invoice_number"},
    "auto_recharge_limit": {},
}
# Money the templates show as text ("EUR 1,234.50"): carried as integer cents plus currency.
_EMAIL_MONEY: Final[dict[str, dict[str, str]]] = {
    "receipt": {"amount": "amount_cents"},
    "upgrade_confirmed": {"amount": "amount_cents"},
    "seats_changed": {"amount": "amount_cents"},
    "auto_recharge_receipt": {"amount": "amount_cents"},
    "auto_recharge_limit": {"spent": "spent_cents", "limit": "spending_limit_cents"},
}
EMAIL_TEMPLATES: Final[frozenset[str]] = frozenset(_EMAIL_DATA)

_MONEY = re.compile(r"([A-Z]{3}) (-?)([0-9][0-9,]*)\.([0-9]{2})")


def money_cents(text: object) -> tuple[int, str] | None:
    """'EUR 1,234.50' (models/money.py's Money as text) -> (123450, 'EUR'); anything else -> None."""
    if not isinstance(text, str):
        return None
    m = _MONEY.fullmatch(text)
    if m is None:
        return None
    cents = int(m.group(3).replace(",", "")) * 100 + int(m.group(4))
    return (-cents if m.group(2) else cents), m.group(1)


@dataclass(frozen=True)
class EmailFacts:
    """What the mailer's transaction reads besides the email itself (webhooks/events.py)."""

    purpose: str | None = None      # a receipt's payment purpose (subscription, renewal, retry)
    in_trial: bool = False          # the organization's subscription started as a trial not yet converted


def email_event(template: str, context: dict[str, Any],
                facts: EmailFacts = EmailFacts()) -> tuple[str, dict[str, Any]] | None:
    """The event an emailed workflow step stands for, as (type, data), or None when the email is no event
    (an alert's, a notice such as trial_ending, a receipt of a pack: its payment and invoice are events)."""
    if template not in _EMAIL_DATA:
        return None
    data: dict[str, Any] = {new: context.get(old) for old, new in _EMAIL_DATA[template].items()}
    for old, new in _EMAIL_MONEY.get(template, {}).items():
        parsed = money_cents(context.get(old))
        data[new] = parsed[0] if parsed else None
        if parsed:
            data["currency"] = parsed[1]
    if template == "trial_started":
        return SUBSCRIPTION_CREATED, {"status": "trialing", **data}
    if template == "receipt":
        if facts.purpose == "subscription":
            if facts.in_trial:
                return SUBSCRIPTION_CHANGED, {"change": "trial_converted", "status": "active", **data}
            return SUBSCRIPTION_CREATED, {"status": "active", **data}
        if facts.purpose in ("renewal", "retry"):
            return SUBSCRIPTION_RENEWED, {"status": "active", "after_failed_payment": facts.purpose == "retry",
                                          **data}
        return None
    if template == "upgrade_confirmed":
        return SUBSCRIPTION_CHANGED, {"change": "upgraded", **data}
    if template == "downgrade_scheduled":
        return SUBSCRIPTION_CHANGED, {"change": "downgrade_scheduled", **data}
    if template == "seats_changed":
        added = isinstance(data.get("seats"), int) and isinstance(data.get("old_seats"), int) \
            and data["seats"] > data["old_seats"]
        return SUBSCRIPTION_CHANGED, {"change": "seats_added" if added else "seats_reduction_scheduled", **data}
    if template == "cancellation_scheduled":
        return SUBSCRIPTION_CANCELLED, data
    if template == "resumed":
        return SUBSCRIPTION_CHANGED, {"change": "resumed", **data}
    if template == "reverted_to_free":
        return SUBSCRIPTION_REVERTED_TO_FREE, {"status": "free", "plan": "free", **data}
    if template == "auto_recharge_receipt":
        return AUTO_RECHARGE_SUCCEEDED, data
    return AUTO_RECHARGE_LIMIT_REACHED, data  # auto_recharge_limit


# -- events whose cause is an incident (failure model rule 3) ---------------------------------------------

# The workflow an incident is in, by its Temporal workflow type.
INCIDENT_WORKFLOWS: Final[dict[str, str]] = {
    "Subscription": "subscription", "PackPurchase": "pack", "AutoRecharge": "auto_recharge"}
ERROR_MESSAGE_MAX_CHARS: Final = 500
# An address in an error's text (a driver's "Key (email)=(ada@x.test)", an SMTP reply): never in an event.
_EMAIL_IN_TEXT = re.compile(r"[^\s@<>()\[\]\"',;:=]+@[^\s@<>()\[\]\"',;:=]+")


def redact_error(message: str) -> str:
    """An error's message as an event carries it: email addresses replaced, at most 500 characters."""
    return _EMAIL_IN_TEXT.sub("[redacted]", message)[:ERROR_MESSAGE_MAX_CHARS]


@dataclass(frozen=True)
class IncidentChange:
    """An incident opened (`error_type` set) or resolved (`resolved_at` set): the argument of the activity
    that writes its event (activities/webhooks.py). `subject`: the failing effect's own business key, where
    one organization may have several incidents of one step at once (two packs' charges in doubt)."""

    org_id: str
    workflow: str                       # subscription | pack | auto_recharge (INCIDENT_WORKFLOWS)
    step: str                           # what failed: renewal, dunning retry, upgrade, pack charge, paid grant...
    since: datetime                     # the first failure: with the org, the step and the subject, its key
    subject: str | None = None
    error_type: str | None = None       # opened: the error's type (PaymentProviderRefused, SimulatedLoss...)
    error_message: str | None = None    # opened: its message, redacted (redact_error)
    resolved_at: datetime | None = None

    @property
    def opened(self) -> bool:
        return self.resolved_at is None


def incident_key(org_id: str, step: str, since: datetime, subject: str | None = None) -> str:
    """An incident's business key: {org}:{since}:incident:{step}[:{subject}]. The opened and the resolved
    event share it (an event's id hashes its type with its key), and a retry or a replay of either writes
    nothing more."""
    key = period_key(org_id, since, f"incident:{step}")
    return key if subject is None else step_key(key, subject)


def incident_event(change: IncidentChange) -> tuple[str, str, dict[str, Any], datetime]:
    """The event of an incident's change, as (type, business key, data, business time)."""
    key = incident_key(change.org_id, change.step, change.since, change.subject)
    data: dict[str, Any] = {"workflow": change.workflow, "step": change.step, "since": stamp(change.since)}
    if change.resolved_at is None:
        data |= {"error_type": change.error_type,
                 "error_message": redact_error(change.error_message or "")}
        return INCIDENT_OPENED, key, data, change.since
    return INCIDENT_RESOLVED, key, data | {"resolved_at": stamp(change.resolved_at)}, change.resolved_at


# -- endpoints ------------------------------------------------------------------------------------------

ENDPOINT_ID_PREFIX: Final = "whe_"
SECRET_PREFIX: Final = "whsec_"        # Standard Webhooks: whsec_ + base64 of the key
URL_MAX_CHARS: Final = 2000
DISABLE_AFTER_DAYS: Final = 3          # an endpoint failing this long is disabled and its owner emailed
DISABLED_FAILING: Final = "failing"    # webhook_endpoints.disabled_reason set by the engine


def check_url(value: object) -> str:
    """An endpoint's URL: http or https with a host, at most 2,000 characters, no credentials in it."""
    if not isinstance(value, str) or len(value) > URL_MAX_CHARS:
        raise InvalidRequest(f"url must be an http(s) URL of at most {URL_MAX_CHARS} characters, got {shown(value)}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidRequest(f"url {shown(value)} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise InvalidRequest(f"url must be an http(s) URL with a host, such as https://example.com/hooks, got "
                             f"{shown(value)}")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url must not hold credentials: the endpoint authenticates events by their signature")
    if any(c.isspace() for c in value):
        raise InvalidRequest(f"url {shown(value)} contains whitespace")
    return value


def check_event_types(value: object) -> list[str]:
    """The event types an endpoint wants: a non-empty list of known types (deduplicated, in catalog order)."""
    if not isinstance(value, list | tuple) or not value:
        raise InvalidRequest(f"events must be a non-empty list of event types ({', '.join(EVENT_TYPES)}), "
                             f"got {shown(value)}")
    unknown = [v for v in value if v not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"unknown event types {shown(unknown)}; known: {', '.join(EVENT_TYPES)}")
    return [t for t in EVENT_TYPES if t in value]


def _printable(kind: str, value: object) -> object:
    """Control characters (a NUL above all, which PostgreSQL refuses in text) are no part of a URL, an address
    or a description."""
    if isinstance(value, str) and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidRequest(f"{kind} {shown(value)} contains control characters")
    return value


def check_endpoint(url: object, events: object, org_id: object, owner_email: object,
                   description: object) -> tuple[str, list[str], str | None, str | None, str]:
    """A new endpoint's fields, checked before anything is written."""
    checked_org = None if org_id is None else check_id("org_id", org_id)
    email = None if owner_email is None else check_email("owner_email", _printable("owner_email", owner_email))
    if not isinstance(description, str) or len(description) > 200:
        raise InvalidRequest(f"description is at most 200 characters, got {shown(description)}")
    _printable("description", description)
    return check_url(_printable("url", url)), check_event_types(events), checked_org, email, description


_ENDPOINT_ID = re.compile(ENDPOINT_ID_PREFIX + "[0-9a-f]{16}")


def is_endpoint_id(value: object) -> bool:
    """Whether `value` could name an endpoint (whe_ + 16 hex digits, as the store makes them)."""
    return isinstance(value, str) and _ENDPOINT_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class WebhookEndpoint:
    """An endpoint as listed: never its secret (shown once, at creation)."""

    id: str
    org_id: str | None          # None: platform-wide, every organization's events
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime
    delivered_seq: int          # every matching event up to this seq was delivered (or was before it existed)
    failing_since: datetime | None
    failed_attempts: int        # failed attempts since the last delivery
    last_error: str | None
    disabled_at: datetime | None
    disabled_reason: str | None
    owner_email: str | None = field(default=None, repr=False)  # personal data: never in a log line


@dataclass(frozen=True)
class NewEndpoint:
    endpoint: WebhookEndpoint
    secret: str                 # whsec_...: shown this once


@dataclass(frozen=True)
class Event:
    seq: int                    # the cursor: GET /v1/events?after=<seq>
    id: str                     # evt_...: the same on every delivery attempt (the webhook-id header)
    org_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime        # business time of its cause


def event_payload(e: Event) -> dict[str, Any]:
    """An event as the API lists it and as a webhook's body carries it (Standard Webhooks: type, timestamp,
    data; plus its id, cursor and organization)."""
    return {"id": e.id, "seq": e.seq, "type": e.type, "org_id": e.org_id,
            "timestamp": e.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"), "data": e.data}


# -- delivery (the workflow and its activity) ------------------------------------------------------------

DELIVER_ACTIVITY: Final = "webhooks.deliver"


def delivery_workflow_id(endpoint_id: str) -> str:
    """One delivery workflow per endpoint (endpoint ids are generated: no ':' to escape)."""
    return f"webhook:{endpoint_id}"


def webhook_task_queue(task_queue: str) -> str:
    """Deliveries run on a task queue of their own, so a slow endpoint never takes a slot a charge needs."""
    return f"{task_queue}-webhooks"


@dataclass(frozen=True)
class DeliveryRun:
    endpoint_id: str


@dataclass(frozen=True)
class DeliverWebhooks:
    endpoint_id: str


@dataclass(frozen=True)
class DeliveryResult:
    delivered: int              # events acknowledged (2xx) in this call
    more: bool                  # it stopped at its batch limit: call again
    stopped: str | None = None  # the endpoint is gone or disabled ("deleted", "disabled", "failing"): stop


__all__ = ["UnknownWebhookEndpoint"]  # raised by webhooks/store.py; the class lives in models/errors.py
