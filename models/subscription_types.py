"""The subscription workflow's state and requests: plain dataclasses (stdlib only), outside the workflow
module so the sandbox passes them through instead of redefining them on every run (a run per renewal)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from models.billing_types import Interval, Status
from models.contract_types import ContractTerms


@dataclass
class Incident:
    """A step of the main loop that failed with an error no retry in place could fix (a Stripe request
    refused, a key refused...). The loop kept its place: the step runs again at `retry_at`, or at once when
    an operator asks (BillingClient.retry_now); its effects are keyed, so what it had done is not redone."""

    step: str              # what was due: "trial", "renewal", "dunning retry"
    error: str             # the error's type and message
    since: datetime
    attempts: int
    retry_at: datetime


@dataclass
class UnfinishedChange:
    """A change whose effects (a charge, a grant, a plan change) did not all complete within the update's
    deadline: any of them may have happened, so the subscription completes the change on its own, on the
    incident backoff, re-running it with the same time and keys (each effect then answers as a repeat)."""

    kind: str                  # "subscribe", "trial", "upgrade", "seats"
    at: datetime               # the update's time: amounts and keys come out the same on every run
    seq: int = 0               # its change_seq (upgrade, seats, contract)
    plan: str | None = None    # upgrade: the new plan
    seats: int | None = None   # seats: the new count
    version: int | None = None  # upgrade: the catalog version the new plan is priced on


@dataclass
class OpenInvoice:
    """An invoice issued on invoice payment terms that the subscription waits to see paid: checked at its due
    date, then dunning at INVOICE_DUNNING_DAYS after it (reminders, then the terms' consequence: Free)."""

    key: str               # its payment's business key
    number: str
    due_at: datetime
    amount: str            # "EUR 240.00": what the reminders say
    stage: int = 0         # the next of INVOICE_DUNNING_DAYS to act at


@dataclass
class SubscriptionState:
    """Everything the subscription knows. Absolute timestamps only: timers do not survive continue-as-new."""
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)

    org_id: str
    status: Status | None = None           # None until the first subscribe
    email: str = ""
    plan: str = "free"
    seats: int = 1
    interval: Interval = "month"
    vat_rate: Decimal = Decimal(0)
    currency: str = "EUR"
    anchor: datetime | None = None         # periods are anniversaries of the anchor
    period_index: int = 0
    period_start: datetime | None = None
    period_end: datetime | None = None
    credit_month: int = 0                  # annual plans: months since the anchor of the current grant
    trial_end: datetime | None = None
    trial_notice_sent: bool = False
    pending_plan: str | None = None
    pending_seats: int | None = None
    cancel_at_period_end: bool = False
    failed_charges: int = 0                # dunning: failures since the renewal date
    change_seq: int = 0                    # numbers the changes within a period: part of their keys
    renewals: int = 0
    incident: Incident | None = None       # the due step failed for good: retried on a backoff
    unfinished: UnfinishedChange | None = None  # an update's change the main loop completes
    # Fields added after histories were recorded keep defaults that mean "as before" (old payloads decode).
    catalog_version: int = 1               # the catalog version the subscription is priced on (grandfathering)
    pending_version: int | None = None     # the version a scheduled downgrade moves to
    contract: ContractTerms | None = None  # negotiated terms over the plan (models/contract_types.py)
    overage_rate_cents: Decimal | None = None  # the rate the uninvoiced overage is invoiced at, next renewal
    open_invoice: OpenInvoice | None = None    # invoice terms: the period's invoice, until it is paid


@dataclass(frozen=True)
class Subscription:
    """The public view (BillingClient.subscription)."""

    org_id: str
    plan: str
    seats: int
    interval: Interval
    status: Status
    period_start: datetime | None
    period_end: datetime | None
    trial_end: datetime | None
    pending_plan: str | None
    pending_seats: int | None
    cancel_at_period_end: bool
    renewals: int
    incident: str | None = None   # "renewal failed (attempt 2, next 2026-02-15T10:04:00Z): PaymentProviderRefused: ..."
    catalog_version: int = 1
    contract: ContractTerms | None = None


@dataclass(frozen=True)
class SubscribeRequest:
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)
    plan: str
    seats: int
    email: str
    interval: Interval = "month"
    trial_days: int = 0
    payment_method: str | None = None
    vat_rate: Decimal = Decimal(0)
    catalog_version: int = 1   # the client sends the current one; 1 in payloads from before versions


@dataclass(frozen=True)
class PlanRequest:
    plan: str
    catalog_version: int = 1


@dataclass(frozen=True)
class ContractRequest:
    """Set (or, with None, end) the organization's contract terms."""
    terms: ContractTerms | None


@dataclass(frozen=True)
class MigrateRequest:
    """An operator moves the subscription to catalog `version`: its next charge is priced on it."""
    version: int


@dataclass(frozen=True)
class SeatsRequest:
    seats: int
