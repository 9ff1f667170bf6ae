"""Typed inputs and results of credit packs and auto-recharge: plain dataclasses, stdlib only, so the
workflows import them and Temporal carries them (Decimal and aware datetimes round-trip exactly)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Literal

DEFAULT_SPENDING_LIMIT_CENTS = 5000   # 50.00 per billing period (docs/product.md)

RechargeStatus = Literal["recharged", "not_needed", "limit_reached", "disabled", "off"]


@dataclass(frozen=True)
class AutoRechargeSettings:
    """An organization's auto-recharge: when a debit leaves the balance under `threshold`, buy `pack`s, or
    amounts of `credits` (exactly one of the two is set), spending at most `spending_limit_cents` (tax
    included) per billing period."""

    org_id: str
    enabled: bool
    threshold: Decimal
    pack: str | None                      # None: it buys an amount of credits
    spending_limit_cents: int
    disabled_reason: str | None = None   # "payment_failed" when the engine turned it off
    credits: Decimal | None = None        # the amount it buys at the catalog's per-credit price (None: a pack)


@dataclass(frozen=True)
class BuyPack:
    """The pack purchase workflow's input: charge `pack`, or an amount of `credits` (exactly one), once per
    `key`, grant it once, priced on catalog `catalog_version` (None: a payload from before catalog versions,
    priced on version 1, the only one then)."""

    org_id: str
    pack: str | None
    key: str                              # {org}:pack:{idempotency key}: payment key, grant key, email key
    credits: Decimal | None = None
    catalog_version: int | None = None


@dataclass(frozen=True)
class PackPurchase:
    org_id: str
    pack: str | None                      # None: an amount of credits was bought
    credits: Decimal
    amount_cents: int                     # charged, tax included
    currency: str
    invoice_number: str
    payment_intent: str
    available: Decimal                    # the balance right after the grant


@dataclass(frozen=True)
class BillingProfile:
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)
    org_id: str
    email: str
    currency: str
    vat_rate: Decimal
    has_payment_method: bool


@dataclass(frozen=True)
class RechargeTrigger:
    """The signal: what asked for a recharge (the debit that crossed the threshold) and when."""

    reason: str
    at: datetime


@dataclass(frozen=True)
class RechargeRun:
    """The auto-recharge workflow's input, carried through continue-as-new."""

    org_id: str
    failed_attempts: int = 0              # consecutive declines (the third disables auto-recharge)


@dataclass(frozen=True)
class PlanRecharge:
    org_id: str
    now: datetime


@dataclass(frozen=True)
class RechargeContext:
    """Everything one round decides on, read at once: settings, balance, this period's spending."""
    personal_data: ClassVar[bool] = True  # holds the billing contact: sealed in Temporal history (temporal_client.py)

    org_id: str
    enabled: bool
    threshold: Decimal
    pack: str
    spending_limit_cents: int
    available: Decimal
    spent_cents: int                      # succeeded auto-recharge charges in the window, tax included
    window_start: datetime                # the billing period (free organizations: the calendar month)
    window_end: datetime
    payments_so_far: int                  # every auto-recharge payment attempt ever: the next key's number
    email: str | None
    currency: str
    vat_rate: Decimal
    settings_version: int                 # the settings' version (0: none): a round acts on this one
    # An amount of credits bought instead of a pack (`pack` is then ""), and the catalog version the round
    # prices on (None in payloads from before both: a pack, catalog version 1).
    credits: Decimal | None = None
    catalog_version: int | None = None


@dataclass(frozen=True)
class SettleRecharge:
    """End a round: hold further triggers until `blocked_until` (limit reached, or a retry is due), or,
    when None, re-arm unless the balance is still under the threshold (then another round runs). A
    block is not applied when the settings changed since `settings_version` (the round decided on old ones)."""

    org_id: str
    now: datetime
    settings_version: int
    blocked_until: datetime | None = None


@dataclass(frozen=True)
class SettleResult:
    org_id: str
    below_threshold: bool
    available: Decimal


@dataclass(frozen=True)
class DisableRecharge:
    """Turn auto-recharge off (unless its settings changed since `settings_version`)."""

    org_id: str
    reason: str
    now: datetime
    settings_version: int


@dataclass(frozen=True)
class RechargeOutcome:
    org_id: str
    status: RechargeStatus
    packs_bought: int
    charged_cents: int
