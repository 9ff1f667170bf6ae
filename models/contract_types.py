"""Contract terms: an organization's negotiated terms over its plan (seed 001's annual Enterprise contracts,
seed 003's custom allowances), and the pure rules that turn them into figures. Plain dataclasses (stdlib
only): the subscription workflow keeps them in its state and Temporal carries them.

One place for each figure a contract changes: the period's allocation (`allowance`), the open-hold limit
(`concurrency_limit`), a seat's price (`contract_seat_cents`) and the overage line (`overage_cents`). The
ledger enforces the overage cap and the hold limit (ledger.set_terms); the workflow prices and grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal

from models.checks import check_time, shown
from models.credits import MILLI, from_milli, to_milli
from models.errors import InvalidRequest
from models.money import Money, round_cents

PaymentTerms = Literal["card", "invoice"]

MAX_TERM = timedelta(days=366 * 10)     # a contract of more than ten years is a typo
MAX_MULTIPLIER = Decimal(100)           # of credits or concurrency: 100x the plan's is already a new plan
MAX_SEAT_CENTS = 10**9                  # 10,000,000.00 per seat and period: far above any price, far inside bigint
MAX_RATE_CENTS = Decimal(10**6)         # per overage credit
MAX_NET_DAYS = 365
RATE_PLACES = 6                         # a per-credit rate in cents, e.g. 0.4 or 0.0125 (fractional cents)


@dataclass(frozen=True)
class ContractTerms:
    """What an organization's contract says over its plan. Unset fields leave the plan's own terms.

    `allowance_multiplier` (1.2: 20% more credits a month) or `allowance_credits` (an absolute allocation per
    period), not both; `concurrency_multiplier` scales the plan's open-hold limit (1.3x of 100 is 130);
    `seat_price_cents` replaces the catalog's seat price for the period's interval; with `overage_allowed`,
    debits past the balance succeed up to `overage_cap` credits (None: no cap) and the period's overage is
    invoiced at the next renewal at `overage_rate_cents` per credit (fractional cents, total rounded
    half-up). Prices are locked from `term_start` to `term_end`: no catalog migration within the term.
    `payment_terms` "invoice" issues open invoices due `net_days` after issue instead of charging a card."""

    term_start: datetime
    term_end: datetime
    allowance_multiplier: Decimal | None = None
    allowance_credits: Decimal | None = None
    concurrency_multiplier: Decimal = Decimal(1)
    seat_price_cents: int | None = None
    overage_allowed: bool = False
    overage_cap: Decimal | None = None
    overage_rate_cents: Decimal | None = None
    payment_terms: PaymentTerms = "card"
    net_days: int = 0


def _decimal(name: str, value: object) -> Decimal:
    if not isinstance(value, Decimal | int) or isinstance(value, bool) or not Decimal(value).is_finite():
        raise InvalidRequest(f"{name} must be a decimal number (e.g. Decimal('1.2')), got {shown(value)}")
    return Decimal(value)


def _whole(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high:,}, got {shown(value)}")
    return value


def _multiplier(name: str, value: object) -> Decimal:
    m = _decimal(name, value)
    if not Decimal(0) < m <= MAX_MULTIPLIER:
        raise InvalidRequest(f"{name} must be above 0 and at most {MAX_MULTIPLIER}, got {shown(value)}")
    return m


def check_contract(terms: object) -> ContractTerms:
    """The terms, or InvalidRequest saying what is wrong with them (nothing is written before this passes)."""
    if not isinstance(terms, ContractTerms):
        raise InvalidRequest(f"contract terms must be ContractTerms, got {shown(terms)}")
    check_time("term_start", terms.term_start)
    check_time("term_end", terms.term_end)
    if not terms.term_start < terms.term_end <= terms.term_start + MAX_TERM:
        raise InvalidRequest(f"a contract's term ends after it starts and lasts at most {MAX_TERM.days} days, "
                             f"got {terms.term_start.isoformat()} to {terms.term_end.isoformat()}")
    if terms.allowance_multiplier is not None and terms.allowance_credits is not None:
        raise InvalidRequest("a contract's allowance is a multiplier or an absolute amount of credits, not both")
    if terms.allowance_multiplier is not None:
        _multiplier("allowance_multiplier", terms.allowance_multiplier)
    if terms.allowance_credits is not None:
        if to_milli(_decimal("allowance_credits", terms.allowance_credits)) < 0:
            raise InvalidRequest(f"allowance_credits cannot be negative, got {shown(terms.allowance_credits)}")
    _multiplier("concurrency_multiplier", terms.concurrency_multiplier)
    if terms.seat_price_cents is not None:
        _whole("seat_price_cents", terms.seat_price_cents, 0, MAX_SEAT_CENTS)
    if not isinstance(terms.overage_allowed, bool):
        raise InvalidRequest(f"overage_allowed must be true or false, got {shown(terms.overage_allowed)}")
    if terms.overage_allowed:
        if terms.overage_rate_cents is None:
            raise InvalidRequest("a contract that allows overage needs overage_rate_cents (cents per credit)")
        rate = _decimal("overage_rate_cents", terms.overage_rate_cents)
        exponent = rate.normalize().as_tuple().exponent
        places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        if not Decimal(0) <= rate <= MAX_RATE_CENTS or places > RATE_PLACES:
            raise InvalidRequest(f"overage_rate_cents must be from 0 to {MAX_RATE_CENTS} cents per credit with at "
                                 f"most {RATE_PLACES} decimal places, got {shown(terms.overage_rate_cents)}")
        if terms.overage_cap is not None and to_milli(_decimal("overage_cap", terms.overage_cap)) < 0:
            raise InvalidRequest(f"overage_cap cannot be negative, got {shown(terms.overage_cap)}")
    elif terms.overage_cap is not None or terms.overage_rate_cents is not None:
        raise InvalidRequest("overage_cap and overage_rate_cents apply only with overage_allowed")
    if terms.payment_terms not in ("card", "invoice"):
        raise InvalidRequest(f"payment_terms must be 'card' or 'invoice', got {shown(terms.payment_terms)}")
    if terms.payment_terms == "invoice":
        _whole("net_days", terms.net_days, 0, MAX_NET_DAYS)
    elif terms.net_days != 0:
        raise InvalidRequest("net_days applies only to payment_terms 'invoice' (a card is charged at once)")
    return terms


def in_term(terms: ContractTerms | None, at: datetime) -> bool:
    """Whether `terms` are in force at `at` (from term_start, up to but not including term_end)."""
    return terms is not None and terms.term_start <= at < terms.term_end


def allowance(terms: ContractTerms | None, plan_credits: Decimal) -> Decimal:
    """A period's plan credits under the contract: the absolute amount, or the plan's times the multiplier
    (to the milli-credit, half-up); the plan's own without a contract."""
    if terms is None:
        return plan_credits
    if terms.allowance_credits is not None:
        return terms.allowance_credits
    if terms.allowance_multiplier is not None:
        return from_milli(int((plan_credits * terms.allowance_multiplier * MILLI)
                              .quantize(Decimal(1), rounding=ROUND_HALF_UP)))
    return plan_credits


def concurrency_limit(terms: ContractTerms | None, plan_max: int) -> int:
    """The open-hold limit under the contract: the plan's times the multiplier, rounded down, at least 1."""
    if terms is None:
        return plan_max
    return max(1, int((plan_max * terms.concurrency_multiplier).to_integral_value(rounding=ROUND_FLOOR)))


def contract_seat_cents(terms: ContractTerms | None, catalog_cents: int) -> int:
    """A seat's price for one period: the contract's when it sets one, else the catalog's."""
    return catalog_cents if terms is None or terms.seat_price_cents is None else terms.seat_price_cents


def overage_cents(credits: Decimal, rate_cents: Decimal) -> int:
    """The overage line's amount: credits x the per-credit rate, rounded half-up to the cent once, on the
    total (5,000 credits at 0.4 cents: 2,000 cents)."""
    return round_cents(credits * rate_cents)


def number_text(value: Decimal) -> str:
    """A credit amount or a rate as people write it: 5,000 and 0.4, not 5000.000 and 0.400."""
    value = value.normalize() if value != value.to_integral_value() else value.quantize(Decimal(1))
    return f"{value:,f}"


def describe(terms: ContractTerms, currency: str) -> str:
    """The terms on one line, what they change over the plan and their term (the Temporal UI's current details,
    the CLI): "2026-01-01 to 2027-01-01; 1.2x credits; 1.3x concurrency; overage at 0.4 cents/credit (no cap);
    card"."""
    parts = [f"{terms.term_start:%Y-%m-%d} to {terms.term_end:%Y-%m-%d}"]
    if terms.allowance_credits is not None:
        parts.append(f"{number_text(terms.allowance_credits)} credits a period")
    elif terms.allowance_multiplier is not None:
        parts.append(f"{number_text(terms.allowance_multiplier)}x credits")
    if terms.concurrency_multiplier != 1:
        parts.append(f"{number_text(terms.concurrency_multiplier)}x concurrency")
    if terms.seat_price_cents is not None:
        parts.append(f"seat {Money(terms.seat_price_cents, currency)} a period")
    if terms.overage_allowed:
        cap = "no cap" if terms.overage_cap is None else f"cap {number_text(terms.overage_cap)} credits"
        parts.append(f"overage at {number_text(terms.overage_rate_cents or Decimal(0))} cents/credit ({cap})")
    parts.append("card" if terms.payment_terms == "card" else f"invoice, net {terms.net_days} days")
    return "; ".join(parts)
