"""Typed inputs and results of the ledger: plain dataclasses (usable as Temporal payloads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

UsageGrouping = Literal["action", "tier", "user"]


@dataclass(frozen=True)
class DebitResult:
    org_id: str
    idempotency_key: str
    cost: Decimal              # on a repeat: what the first call charged (nothing is charged again)
    available: Decimal | None  # the balance after this call; None for credit-free actions (not metered)
    replayed: bool             # True when the key was seen before and this call changed nothing
    # True when this debit left the balance under the auto-recharge threshold and no recharge was under
    # way: the caller starts (signals) the organization's auto-recharge workflow. BillingClient does.
    recharge_triggered: bool = False


@dataclass(frozen=True)
class HoldResult:
    org_id: str
    idempotency_key: str
    cost: Decimal
    available: Decimal
    replayed: bool
    status: Literal["open", "committed", "released"]
    recharge_triggered: bool = False   # this hold's reservation crossed the auto-recharge threshold
    # The plan's maximum of open holds, and the live (unexpired) ones open after this call, read in the
    # same statement: what the credits middleware's X-Concurrency-* headers say.
    concurrency_limit: int = 0
    concurrency_open: int = 0


@dataclass(frozen=True)
class Balance:
    org_id: str
    plan_name: str
    available: Decimal      # plan + topup - held
    plan: Decimal           # live plan credits (this period's allocation left, or today's free credits)
    topup: Decimal          # pack credits, never expire
    held: Decimal           # reserved by open holds
    allocation: Decimal     # this period's plan allocation
    consumed_this_period: Decimal
    period_start: datetime
    period_end: datetime | None
    concurrency_limit: int = 0  # the maximum of open holds: the wallet terms' limit, else the plan's
    concurrency_open: int = 0   # live (unexpired) holds open now
    overage: Decimal = Decimal("0.000")   # recorded overage not yet closed (invoiced): this period's
    overage_cap: Decimal | None = None    # the most overage the terms allow (None: no cap, or no overage)
    overage_allowed: bool = False         # the wallet terms allow debits and holds past the balance
    overage_held: Decimal = Decimal("0.000")  # reserved in overage by open holds (recorded on commit)


@dataclass(frozen=True)
class UsageRow:
    key: str | None         # the action, tier or user id (None: no tier / no user)
    uses: int
    quantity: Decimal
    credits: Decimal


@dataclass(frozen=True)
class Transaction:
    id: int
    at: datetime
    kind: Literal["grant", "debit", "expire", "adjust", "hold", "release", "overage", "overage_closed"]
    # signed: grants positive, debits and expiries negative; overage negative (used past the balance, owed),
    # overage_closed positive (the owed overage taken to an invoice by close_overage)
    credits: Decimal
    bucket: str | None      # the bucket's grant key (None for hold reservations)
    ref: str                # the business key that caused it


@dataclass(frozen=True)
class StartPeriod:
    """Open the wallet if needed and start an allocation period for `plan` (idempotent by `key`)."""

    org_id: str
    key: str
    plan: str
    period_start: datetime
    period_end: datetime | None  # None for the free plan (its credits are per UTC day)
    now: datetime
    grant: bool = True           # False: close the plan bucket and grant nothing (a renewal not yet paid)
    # This period's allocation (a contract's, e.g. 48,000 on enterprise); None: the plan's catalog credits.
    # Defaulted: payloads recorded before the field existed decode to today's behaviour.
    credits: Decimal | None = None


@dataclass(frozen=True)
class ChangePlan:
    """Move to `plan` mid-period (an upgrade): its plan credits become the new allocation minus the plan
    credits consumed this period, never below 0; packs untouched. Idempotent by `key`."""

    org_id: str
    key: str
    plan: str
    now: datetime
    credits: Decimal | None = None   # the new allocation (a contract's); None: the plan's catalog credits


@dataclass(frozen=True)
class GrantPack:
    org_id: str
    key: str
    credits: Decimal
    now: datetime


@dataclass(frozen=True)
class LedgerWriteResult:
    org_id: str
    available: Decimal
    replayed: bool


@dataclass(frozen=True)
class Alert:
    id: int
    org_id: str
    kind: Literal["plan_80", "plan_100", "low_balance", "usage_guard_paused"]
    period_key: str
    detail: str
    created_at: datetime


@dataclass(frozen=True)
class UserLimit:
    """A user's credit limit as a debit applies it, and what the user spent this period (counted while the
    organization has any limit: what the limit is checked against)."""

    limit: Decimal | None
    source: Literal["user", "default"] | None   # the user's own limit, or the organization's default; None: none
    used: Decimal


@dataclass(frozen=True)
class WalletTerms:
    """What the ledger enforces of an organization's contract. The default: no overage, the plan's limit.

    `overage_allowed`: past the available balance, debits and holds succeed up to `overage_cap` credits of
    overage not yet closed (None: no cap); the rest of a cost the balance does not cover is recorded as overage.
    `concurrency_limit`: the most open holds (None: the plan's max_concurrent_holds); it survives new periods
    and plan changes until terms are set again."""

    overage_allowed: bool = False
    overage_cap: Decimal | None = None
    concurrency_limit: int | None = None


@dataclass(frozen=True)
class SetTerms:
    """Set an organization's wallet terms (idempotent: the same terms again change nothing)."""

    org_id: str
    terms: WalletTerms


@dataclass(frozen=True)
class CloseOverage:
    """Take the wallet's recorded overage, not yet closed, to an invoice under `key` (once per key)."""

    org_id: str
    key: str
    now: datetime


@dataclass(frozen=True)
class OverageClosed:
    org_id: str
    key: str
    credits: Decimal   # the overage closed under `key`: on a repeat, the first call's figure
    replayed: bool
