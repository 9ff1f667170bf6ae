"""The subscription's rules as pure functions over the catalog: what a period costs, and which changes
are allowed in which state. The workflow's Update validators call these, so a bad request is refused
with the same clear message everywhere and never enters history."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from models.billing_types import Interval, Status
from models.catalog import Catalog, Plan
from models.checks import check_email, check_rate, shown
from models.errors import InvalidRequest
from models.money import round_cents

MAX_TRIAL_DAYS = 365
CHANGEABLE: tuple[Status, ...] = ("trialing", "active")


def seat_price_cents(catalog: Catalog, plan: Plan, interval: Interval) -> int:
    """One seat for one period: the monthly price, or 12 months less the plan's annual discount (catalog
    data per plan: 20% on the default catalog's paid plans). `plan` is one of `catalog`'s plans (the
    catalog resolved its discount: its own, else the catalog's default)."""
    if interval == "month":
        return plan.price_cents_per_seat
    discount = catalog.annual_discount_percent if plan.annual_discount_percent is None else plan.annual_discount_percent
    return round_cents(Decimal(plan.price_cents_per_seat * 12) * (100 - discount) / 100)


# A ceiling on any plan's seats, the catalog's own max_seats aside (enterprise has none): a typo must not
# charge millions, and every seat total stays far inside the database's bigint of cents.
MAX_SEATS = 10_000


def check_seat_count(seats: object) -> int:
    """A seat count any plan could take: a whole number from 1 to MAX_SEATS (the client checks it before a
    payload is built: an int past 4,300 digits could not even be decoded by the workflow)."""
    if not isinstance(seats, int) or isinstance(seats, bool):
        raise InvalidRequest(f"seats must be a whole number, got {shown(seats)}")
    if abs(seats) > MAX_SEATS:  # a plan's own bounds, below, say more about the rest
        raise InvalidRequest(f"seats must be from 1 to {MAX_SEATS:,}, got {shown(seats)}")
    return seats


def check_seats(plan: Plan, seats: object) -> int:
    seats = check_seat_count(seats)
    top = MAX_SEATS if plan.max_seats is None else min(plan.max_seats, MAX_SEATS)
    if not plan.min_seats <= seats <= top:
        raise InvalidRequest(f"the {plan.name} plan takes {plan.min_seats} to {top:,} seats, not {shown(seats)}")
    return seats


def check_subscribe(
    catalog: Catalog, status: Status | None, plan_name: str, seats: object, interval: str, trial_days: object,
    email: str, vat_rate: Decimal,
) -> Plan:
    if status not in (None, "free"):
        raise InvalidRequest(f"this organization already has a subscription ({status}); change it instead")
    plan = catalog.plan(plan_name)
    if plan.is_free:
        raise InvalidRequest("the free plan needs no subscription: every organization starts on it")
    check_seats(plan, seats)
    if interval not in ("month", "year"):
        raise InvalidRequest(f"interval must be 'month' or 'year', got {shown(interval)}")
    if not isinstance(trial_days, int) or isinstance(trial_days, bool) or not 0 <= trial_days <= MAX_TRIAL_DAYS:
        raise InvalidRequest(f"trial_days must be a whole number from 0 to {MAX_TRIAL_DAYS}, got {shown(trial_days)}")
    check_email("email", email)
    check_rate("vat_rate", vat_rate)
    return plan


def _check_changeable(status: Status | None, what: str) -> None:
    if status is None:
        raise InvalidRequest(f"cannot {what}: this organization has no subscription")
    if status == "past_due":
        raise InvalidRequest(f"cannot {what} while a payment is past due: update the card, the next retry settles it")
    if status not in CHANGEABLE:
        raise InvalidRequest(f"cannot {what}: the organization is on the free plan; subscribe first")


def check_upgrade(catalog: Catalog, status: Status | None, current: str, new: str) -> Plan:
    _check_changeable(status, "upgrade")
    plan, now = catalog.plan(new), catalog.plan(current)
    if plan.price_cents_per_seat <= now.price_cents_per_seat:
        raise InvalidRequest(f"{new} is not an upgrade from {current}: use downgrade for a cheaper plan")
    return plan


def check_downgrade(catalog: Catalog, status: Status | None, current: str, new: str, seats: int) -> Plan | None:
    """The plan to move to at period end, or None when `new` is the current plan (withdraws the pending one)."""
    _check_changeable(status, "downgrade")
    plan, now = catalog.plan(new), catalog.plan(current)
    if plan.name == now.name:
        return None
    if plan.is_free:
        raise InvalidRequest("to move to the free plan, cancel: the subscription ends at period end")
    if plan.price_cents_per_seat >= now.price_cents_per_seat:
        raise InvalidRequest(f"{new} is not a downgrade from {current}: use upgrade for a higher plan")
    if plan.max_seats is not None and seats > plan.max_seats:
        raise InvalidRequest(f"{seats} seats do not fit the {new} plan (at most {plan.max_seats}): remove seats first")
    return plan


def check_change_seats(catalog: Catalog, status: Status | None, plan_name: str, pending_plan: str | None,
                       current: int, seats: object) -> int:
    _check_changeable(status, "change seats")
    n = check_seats(catalog.plan(plan_name), seats)
    if pending_plan is not None and n < current:
        check_seats(catalog.plan(pending_plan), n)
    if pending_plan is not None and n > current:
        check_seats(catalog.plan(pending_plan), n)
    return n


INCIDENT_FIRST_RETRY = timedelta(minutes=1)
INCIDENT_MAX_RETRY = timedelta(hours=1)


def incident_backoff(attempts: int) -> timedelta:
    """How long after its `attempts`-th failure a failed step runs again: 1 min, doubling, at most 1 h."""
    doublings: int = min(max(attempts - 1, 0), 10)
    return min(INCIDENT_FIRST_RETRY * (1 << doublings), INCIDENT_MAX_RETRY)


def check_changeable(status: Status | None, what: str) -> None:
    """A change other than those above (a contract, a catalog migration) needs a paid subscription too."""
    _check_changeable(status, what)
