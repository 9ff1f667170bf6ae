"""Contract terms (models/contract_types.py): the figures a contract changes, exact, and the terms refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.catalog import CATALOG
from models.contract_types import (
    ContractTerms,
    allowance,
    check_contract,
    concurrency_limit,
    contract_seat_cents,
    describe,
    in_term,
    number_text,
    overage_cents,
)
from models.errors import InvalidRequest

START = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = ContractTerms(START, START + timedelta(days=365))
ENTERPRISE = CATALOG.plan("enterprise")


def test_seed_001s_enterprise_contract() -> None:
    """+20% credits a month at the same fee, 1.3x concurrency, 0.4 cents an overage credit."""
    terms = check_contract(replace(YEAR, allowance_multiplier=Decimal("1.2"), concurrency_multiplier=Decimal("1.3"),
                                   overage_allowed=True, overage_rate_cents=Decimal("0.4"),
                                   payment_terms="invoice", net_days=7))
    assert allowance(terms, ENTERPRISE.credits) == Decimal("48000")
    assert concurrency_limit(terms, ENTERPRISE.max_concurrent_holds) == 130
    assert overage_cents(Decimal(5000), Decimal("0.4")) == 2000  # EUR 20.00
    assert contract_seat_cents(terms, 20000) == 20000


def test_without_a_contract_the_plan_decides() -> None:
    assert allowance(None, Decimal(40000)) == Decimal(40000)
    assert concurrency_limit(None, 100) == 100
    assert contract_seat_cents(None, 9000) == 9000
    assert not in_term(None, START)


def test_an_absolute_allowance_and_a_seat_price() -> None:
    terms = check_contract(replace(YEAR, allowance_credits=Decimal("12345.5"), seat_price_cents=15000))
    assert allowance(terms, Decimal(40000)) == Decimal("12345.5")
    assert contract_seat_cents(terms, 20000) == 15000


def test_rounding_is_half_up_once_on_the_total() -> None:
    assert overage_cents(Decimal(3), Decimal("0.5")) == 2          # 1.5 cents
    assert overage_cents(Decimal("0.001"), Decimal("0.4")) == 0    # 0.0004 cents
    assert overage_cents(Decimal(1), Decimal("0.0125")) == 0
    assert overage_cents(Decimal(40), Decimal("0.0125")) == 1      # 0.5 cents
    assert allowance(replace(YEAR, allowance_multiplier=Decimal("1.0005")), Decimal(1)) == Decimal("1.001")
    assert concurrency_limit(replace(YEAR, concurrency_multiplier=Decimal("0.001")), 5) == 1  # never below one
    assert concurrency_limit(replace(YEAR, concurrency_multiplier=Decimal("1.29")), 100) == 129


def test_the_term_is_half_open() -> None:
    assert in_term(YEAR, START)
    assert in_term(YEAR, YEAR.term_end - timedelta(microseconds=1))
    assert not in_term(YEAR, YEAR.term_end)
    assert not in_term(YEAR, START - timedelta(seconds=1))


@pytest.mark.parametrize(("change", "message"), [
    ({"term_end": START}, "ends after it starts"),
    ({"term_end": START + timedelta(days=366 * 10 + 1)}, "lasts at most"),
    ({"term_start": datetime(2026, 1, 1)}, "timezone-aware"),
    ({"allowance_multiplier": Decimal("1.2"), "allowance_credits": Decimal(1)}, "not both"),
    ({"allowance_multiplier": Decimal(0)}, "above 0"),
    ({"allowance_multiplier": 1.2}, "decimal number"),
    ({"allowance_credits": Decimal("-1")}, "negative"),
    ({"allowance_credits": Decimal("0.0001")}, "3 decimal places"),
    ({"concurrency_multiplier": Decimal(101)}, "at most 100"),
    ({"seat_price_cents": -1}, "seat_price_cents"),
    ({"seat_price_cents": Decimal(100)}, "seat_price_cents"),
    ({"overage_allowed": True}, "needs overage_rate_cents"),
    ({"overage_allowed": True, "overage_rate_cents": Decimal("-0.1")}, "overage_rate_cents must be"),
    ({"overage_allowed": True, "overage_rate_cents": Decimal("0.0000001")}, "6 decimal places"),
    ({"overage_allowed": True, "overage_rate_cents": Decimal(1), "overage_cap": Decimal(-5)}, "negative"),
    ({"overage_cap": Decimal(5)}, "only with overage_allowed"),
    ({"overage_allowed": "yes"}, "true or false"),
    ({"payment_terms": "cheque"}, "'card' or 'invoice'"),
    ({"net_days": 7}, "only to payment_terms 'invoice'"),
    ({"payment_terms": "invoice", "net_days": -1}, "net_days"),
    ({"payment_terms": "invoice", "net_days": 366}, "net_days"),
])
def test_bad_terms_are_refused_typed(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_contract(replace(YEAR, **change))


def test_only_terms_are_terms() -> None:
    with pytest.raises(InvalidRequest, match="ContractTerms"):
        check_contract({"term_start": START})


@given(st.integers(0, 10**9), st.decimals(min_value=0, max_value=1000, places=6))
def test_overage_is_the_exact_product_rounded_once(milli: int, rate: Decimal) -> None:
    credits = Decimal(milli).scaleb(-3)
    cents = overage_cents(credits, rate)
    assert abs(Decimal(cents) - credits * rate) <= Decimal("0.5")


def test_the_terms_on_one_line() -> None:
    terms = replace(YEAR, allowance_multiplier=Decimal("1.2"), concurrency_multiplier=Decimal("1.3"),
                    seat_price_cents=15000, overage_allowed=True, overage_rate_cents=Decimal("0.400"),
                    overage_cap=Decimal("20000.000"), payment_terms="invoice", net_days=7)
    assert describe(terms, "EUR") == ("2026-01-01 to 2027-01-01; 1.2x credits; 1.3x concurrency; seat EUR 150.00 a "
                                      "period; overage at 0.4 cents/credit (cap 20,000 credits); invoice, net 7 days")
    assert describe(replace(YEAR, allowance_credits=Decimal("5000.5")), "EUR") == \
        "2026-01-01 to 2027-01-01; 5,000.5 credits a period; card"
    assert number_text(Decimal("5000.000")) == "5,000" and number_text(Decimal("0.0125")) == "0.0125"
