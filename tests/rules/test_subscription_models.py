"""Pure rules of the subscription: periods, proration, seat prices, invoice totals, request checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from models.billing_types import InvoiceLine
from models.catalog import CATALOG
from models.errors import InvalidRequest
from models.invoicing import charge_summary, invoice_number, totals
from models.periods import add_months, credit_month_bounds, period_bounds, remaining_fraction
from models.proration import added_seats_cents, prorate_cents, upgrade_cents
from models.subscription_rules import (
    check_change_seats,
    check_downgrade,
    check_subscribe,
    check_upgrade,
    incident_backoff,
    seat_price_cents,
)


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def test_months_clamp_to_the_month_end_and_come_back() -> None:
    jan31 = utc(2026, 1, 31, 9)
    assert [add_months(jan31, n) for n in range(4)] == [
        utc(2026, 1, 31, 9), utc(2026, 2, 28, 9), utc(2026, 3, 31, 9), utc(2026, 4, 30, 9)]
    assert add_months(utc(2027, 1, 31), 1) == utc(2027, 2, 28)
    assert add_months(utc(2028, 1, 31), 1) == utc(2028, 2, 29)  # leap year
    assert add_months(utc(2026, 12, 15), 1) == utc(2027, 1, 15)
    with pytest.raises(ValueError):
        add_months(datetime(2026, 1, 1), 1)  # naive


def test_periods_are_anniversaries_of_the_anchor() -> None:
    anchor = utc(2026, 1, 31)
    assert period_bounds(anchor, "month", 1) == (utc(2026, 2, 28), utc(2026, 3, 31))
    assert period_bounds(anchor, "year", 1) == (utc(2027, 1, 31), utc(2028, 1, 31))
    assert period_bounds(utc(2028, 2, 29), "year", 1) == (utc(2029, 2, 28), utc(2030, 2, 28))
    assert credit_month_bounds(anchor, 13) == (utc(2027, 2, 28), utc(2027, 3, 31))


def test_remaining_fraction_is_by_seconds_and_clamped() -> None:
    start, end = utc(2026, 1, 1), utc(2026, 1, 31)
    assert remaining_fraction(start, end, start + timedelta(days=20)) == (10 * 86400, 30 * 86400)
    assert remaining_fraction(start, end, end + timedelta(days=1)) == (0, 30 * 86400)
    assert remaining_fraction(start, end, start - timedelta(days=1)) == (30 * 86400, 30 * 86400)


def test_prices_and_proration() -> None:
    pro = CATALOG.plan("pro")
    assert seat_price_cents(CATALOG, pro, "month") * 3 == 27000            # pro x 3 seats = 270.00
    assert seat_price_cents(CATALOG, pro, "year") == 86400                 # 12 x 90.00 less 20%
    # An upgrade to enterprise with a third of the period left: (200 - 90) x 3 x 1/3 = 110.00
    assert upgrade_cents(9000, 20000, 3, 10, 30) == 11000
    assert prorate_cents(1001, 1, 2) == 501                                  # half-up
    assert prorate_cents(1001, 0, 2) == 0
    assert added_seats_cents(9000, 2, 15, 30) == 9000
    with pytest.raises(ValueError):
        upgrade_cents(9000, 4900, 1, 1, 2)
    with pytest.raises(ValueError):
        prorate_cents(100, 3, 2)


def test_invoice_totals_and_numbers() -> None:
    lines = [InvoiceLine("pro x 3 seats", 3, 9000, 27000)]
    t = totals(lines, Decimal("0.2"))
    assert (t.subtotal_cents, t.tax_cents, t.total_cents) == (27000, 5400, 32400)
    assert totals([InvoiceLine("x", 1, 5, 5)], Decimal("0.1")).tax_cents == 1  # 0.5 cent rounds up
    assert invoice_number(2026, 42) == "INV-2026-000042"
    # The millionth invoice of a year gets a seventh digit: the number is taken after Stripe has charged.
    assert invoice_number(2026, 999_999) == "INV-2026-999999"
    assert invoice_number(2026, 1_000_000) == "INV-2026-1000000"
    assert charge_summary(lines, Decimal(0)) == "Charge EUR 270.00: pro x 3 seats"
    with pytest.raises(ValueError):
        invoice_number(2026, 0)
    with pytest.raises(ValueError):
        totals(lines, Decimal("1.5"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"plan": "gold"}, "unknown plan"),
    ({"plan": "free"}, "free plan needs no subscription"),
    ({"seats": 0}, "1 to 25 seats"),
    ({"seats": 26}, "1 to 25 seats"),
    ({"seats": 2.5}, "whole number"),
    ({"interval": "week"}, "interval"),
    ({"trial_days": -1}, "trial_days"),
    ({"email": "nobody"}, "email"),
    ({"vat_rate": Decimal("1.2")}, "vat_rate"),
    ({"status": "active"}, "already has a subscription"),
])
def test_bad_subscribe_requests_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"status": None, "plan": "pro", "seats": 3, "interval": "month", "trial_days": 0,
                               "email": "ops@acme.test", "vat_rate": Decimal(0)} | kwargs
    with pytest.raises(InvalidRequest, match=message):
        check_subscribe(CATALOG, args["status"], args["plan"], args["seats"], args["interval"],  # type: ignore[arg-type]
                        args["trial_days"], args["email"], args["vat_rate"])  # type: ignore[arg-type]


def test_changes_are_checked_against_the_state() -> None:
    assert check_upgrade(CATALOG, "active", "pro", "enterprise").name == "enterprise"
    with pytest.raises(InvalidRequest, match="not an upgrade"):
        check_upgrade(CATALOG, "active", "pro", "starter")
    with pytest.raises(InvalidRequest, match="past due"):
        check_upgrade(CATALOG, "past_due", "pro", "enterprise")
    with pytest.raises(InvalidRequest, match="free plan"):
        check_upgrade(CATALOG, "free", "free", "pro")
    assert check_downgrade(CATALOG, "active", "pro", "pro", 3) is None  # withdraws
    with pytest.raises(InvalidRequest, match="do not fit"):
        check_downgrade(CATALOG, "active", "pro", "starter", 6)
    with pytest.raises(InvalidRequest, match="not a downgrade"):
        check_downgrade(CATALOG, "active", "pro", "enterprise", 3)
    with pytest.raises(InvalidRequest, match="cancel"):
        check_downgrade(CATALOG, "active", "pro", "free", 1)
    assert check_change_seats(CATALOG, "active", "pro", None, 3, 5) == 5
    with pytest.raises(InvalidRequest, match="1 to 5 seats"):
        check_change_seats(CATALOG, "active", "pro", "starter", 3, 8)  # the pending plan must fit too


def test_a_failed_step_is_retried_on_a_bounded_backoff() -> None:
    waits = [incident_backoff(n) for n in range(1, 10)]
    assert waits[:4] == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4), timedelta(minutes=8)]
    assert max(waits) == timedelta(hours=1) and waits == sorted(waits)
    assert incident_backoff(10**6) == timedelta(hours=1)  # bounded however many attempts
