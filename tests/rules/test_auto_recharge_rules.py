"""Auto-recharge's pure rules (models/auto_recharge.py): how many packs, what a round does, which window
the spending limit caps, and which settings are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from models.auto_recharge import Decision, check_settings, decide, packs_needed, spending_window
from models.catalog import CATALOG
from models.errors import InvalidRequest

D = Decimal
PACK_500 = CATALOG.pack("500")      # 500 credits, 2500 cents
PACK_2500 = CATALOG.pack("2500")    # 2500 credits, 10000 cents


def test_catalog_packs_used_below_are_priced_as_assumed() -> None:
    assert (PACK_500.credits, PACK_500.price_cents) == (D("500"), 2500)
    assert (PACK_2500.credits, PACK_2500.price_cents) == (D("2500"), 10000)


# -- packs_needed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "threshold", "pack", "expected"),
    [
        (D("100"), D("100"), D("500"), 0),      # at the threshold: not under it
        (D("5000"), D("100"), D("500"), 0),     # far above
        (D("99"), D("100"), D("500"), 1),
        (D("0"), D("999"), D("500"), 2),        # 2 packs make 1000 > 999
        (D("0"), D("1000"), D("500"), 3),       # 2 packs make exactly 1000: not above, so 3
        (D("500"), D("1000"), D("500"), 2),     # 1 pack makes exactly 1000: not above, so 2
        (D("999.999"), D("1000"), D("500"), 1),
        (D("0"), D("1"), D("500"), 1),
        (D("-20"), D("0.5"), D("0.25"), 83),    # 20.5 / 0.25 = 82 packs make exactly 0.5: one more
    ],
)
def test_packs_needed_is_fewest_packs_bringing_balance_strictly_above_threshold(
    available: Decimal, threshold: Decimal, pack: Decimal, expected: int
) -> None:
    n = packs_needed(available, threshold, pack)
    assert n == expected
    if n:
        assert available + n * pack > threshold
        assert available + (n - 1) * pack <= threshold


def test_packs_needed_refuses_a_pack_without_credits() -> None:
    with pytest.raises(ValueError, match="a pack holds credits"):
        packs_needed(D("0"), D("100"), D("0"))


# -- decide ---------------------------------------------------------------------------------------------


ZERO = D("0")
THOUSAND = D("1000")


def _decide(
    *, enabled: bool = True, available: Decimal = ZERO, threshold: Decimal = THOUSAND, pack_name: str = "500",
    limit: int = 100_000, spent: int = 0, vat: Decimal = ZERO,
) -> Decision:
    return decide(enabled=enabled, available=available, threshold=threshold, pack_name=pack_name,
                  pack=CATALOG.pack(pack_name), spending_limit_cents=limit, spent_cents=spent, vat_rate=vat)


def test_decide_is_off_when_disabled_even_under_threshold() -> None:
    assert _decide(enabled=False, available=D("0")) == Decision("off", 0, 0)


def test_decide_is_not_needed_at_or_above_threshold() -> None:
    assert _decide(available=D("1000"), threshold=D("1000")) == Decision("not_needed", 0, 0)
    assert _decide(available=D("4000"), threshold=D("1000")) == Decision("not_needed", 0, 0)


def test_decide_buys_all_needed_packs_in_one_charge_without_vat() -> None:
    # 0 available, threshold 1000: 3 packs of 500 at 2500 cents.
    assert _decide(available=D("0"), threshold=D("1000")) == Decision("buy", 3, 7500)


def test_decide_total_includes_vat() -> None:
    assert _decide(available=D("99"), threshold=D("100"), vat=D("0.2")) == Decision("buy", 1, 3000)
    assert _decide(available=D("0"), threshold=D("1000"), vat=D("0.2")) == Decision("buy", 3, 9000)


def test_decide_vat_rounds_half_up_to_the_cent() -> None:
    # 2500 * 0.0702 = 175.5 cents of tax -> 176.
    assert _decide(available=D("99"), threshold=D("100"), vat=D("0.0702")) == Decision("buy", 1, 2676)


def test_decide_buys_exactly_up_to_the_limit() -> None:
    assert _decide(available=D("0"), threshold=D("1000"), limit=7500) == Decision("buy", 3, 7500)
    assert _decide(available=D("0"), threshold=D("1000"), limit=10_000, spent=2500) == Decision("buy", 3, 7500)


def test_decide_partial_buy_when_limit_allows_fewer_packs_than_needed() -> None:
    # 3 needed (7500); the limit leaves room for 2 (5000).
    assert _decide(available=D("0"), threshold=D("1000"), limit=7499) == Decision("buy", 2, 5000)
    assert _decide(available=D("0"), threshold=D("1000"), limit=5000) == Decision("buy", 2, 5000)
    # 2500 already spent this window out of 5000: one pack fits.
    assert _decide(available=D("0"), threshold=D("1000"), limit=5000, spent=2500) == Decision("buy", 1, 2500)
    # with VAT 20%: 3 packs cost 9000, 2 cost 6000; limit 8999 -> 2.
    assert _decide(available=D("0"), threshold=D("1000"), limit=8999, vat=D("0.2")) == Decision("buy", 2, 6000)


def test_decide_limit_reached_when_even_one_pack_would_exceed() -> None:
    assert _decide(available=D("0"), threshold=D("1000"), limit=5000, spent=2501) == Decision("limit_reached", 0, 0)
    assert _decide(available=D("0"), threshold=D("1000"), limit=5000, spent=5000) == Decision("limit_reached", 0, 0)


def test_decide_limit_reached_when_limit_covers_net_price_but_not_price_with_vat() -> None:
    # one pack: 2500 net, 3000 with 20% VAT; limit 2999 >= net price but < price with tax.
    assert _decide(available=D("99"), threshold=D("100"), limit=2999, vat=D("0.2")) == Decision("limit_reached", 0, 0)
    assert _decide(available=D("99"), threshold=D("100"), limit=3000, vat=D("0.2")) == Decision("buy", 1, 3000)


# -- spending_window ------------------------------------------------------------------------------------

P_START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
P_END = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)


def test_spending_window_is_the_paid_period_when_now_is_inside_it() -> None:
    assert spending_window(False, P_START, P_END, datetime(2026, 2, 1, tzinfo=UTC)) == (P_START, P_END)
    assert spending_window(False, P_START, P_END, P_START) == (P_START, P_END)   # start included
    last = P_END - timedelta(microseconds=1)
    assert spending_window(False, P_START, P_END, last) == (P_START, P_END)


def test_spending_window_is_the_utc_calendar_month_for_free_plans() -> None:
    now = datetime(2026, 2, 17, 9, 30, tzinfo=UTC)
    assert spending_window(True, P_START, None, now) == (
        datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    # a free wallet ignores any period it carries
    assert spending_window(True, P_START, P_END, datetime(2026, 2, 1, tzinfo=UTC)) == (
        datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


def test_spending_window_is_the_calendar_month_once_the_paid_period_ended() -> None:
    assert spending_window(False, P_START, P_END, P_END) == (   # end excluded
        datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert spending_window(False, P_START, P_END, datetime(2026, 3, 3, tzinfo=UTC)) == (
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


def test_spending_window_december_rolls_into_next_year() -> None:
    assert spending_window(True, P_START, None, datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_spending_window_month_is_taken_in_utc_not_local_time() -> None:
    # 2026-03-01 00:30 at UTC+2 is 2026-02-28 22:30 UTC: February.
    now = datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    start, end = spending_window(True, P_START, None, now)
    assert (start, end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert start.utcoffset() == timedelta(0)


# -- check_settings -------------------------------------------------------------------------------------


def test_check_settings_accepts_good_input_and_returns_decimal_threshold() -> None:
    got = check_settings(CATALOG, threshold=D("1000.125"), pack="500", spending_limit_cents=5000, enabled=True)
    assert got == D("1000.125")
    assert isinstance(got, Decimal)
    got = check_settings(CATALOG, threshold=D("0"), pack="2500", spending_limit_cents=10000, enabled=False)
    assert got == D("0")


def test_check_settings_accepts_int_threshold_as_decimal() -> None:
    got = check_settings(CATALOG, threshold=250, pack="1000",  # type: ignore[arg-type]
                         spending_limit_cents=4500, enabled=True)
    assert (got, type(got)) == (D("250"), Decimal)


def _refused(**overrides: object) -> str:
    kwargs: dict[str, object] = {"threshold": D("100"), "pack": "500", "spending_limit_cents": 5000, "enabled": True}
    kwargs.update(overrides)
    with pytest.raises(InvalidRequest) as info:
        check_settings(CATALOG, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_check_settings_refuses_unknown_pack() -> None:
    msg = _refused(pack="750")
    assert "pack" in msg and "750" in msg
    assert "500" in msg and "2500" in msg   # names the known packs


def test_check_settings_refuses_non_string_pack() -> None:
    assert "pack" in _refused(pack=500)


def test_check_settings_refuses_negative_threshold() -> None:
    msg = _refused(threshold=D("-1"))
    assert "negative" in msg and "-1" in msg


def test_check_settings_refuses_float_threshold() -> None:
    msg = _refused(threshold=100.0)
    assert "threshold" in msg and "100.0" in msg


def test_check_settings_refuses_bool_threshold() -> None:
    assert "threshold" in _refused(threshold=True)


def test_check_settings_refuses_threshold_finer_than_a_milli_credit() -> None:
    msg = _refused(threshold=D("1.0001"))
    assert "3 decimal places" in msg and "1.0001" in msg


def test_check_settings_refuses_non_finite_threshold() -> None:
    assert "finite" in _refused(threshold=D("NaN"))


def test_check_settings_refuses_threshold_above_a_billion_credits() -> None:
    assert "at most" in _refused(threshold=D(10**9 + 1))
    assert check_settings(CATALOG, threshold=D(10**9), pack="500", spending_limit_cents=5000,
                          enabled=True) == D(10**9)


def test_check_settings_refuses_spending_limit_below_one_pack_price() -> None:
    msg = _refused(pack="2500", spending_limit_cents=9999)
    assert "9999" in msg and "10000" in msg and "2500" in msg
    # exactly one pack's price is enough
    assert check_settings(CATALOG, threshold=D("1"), pack="2500", spending_limit_cents=10000,
                          enabled=True) == D("1")


def test_check_settings_refuses_non_int_spending_limit() -> None:
    assert "spending_limit_cents" in _refused(spending_limit_cents=D("5000"))
    assert "spending_limit_cents" in _refused(spending_limit_cents=5000.0)
    assert "spending_limit_cents" in _refused(spending_limit_cents="5000")


def test_check_settings_refuses_bool_spending_limit() -> None:
    assert "spending_limit_cents" in _refused(spending_limit_cents=True)


def test_check_settings_refuses_absurd_spending_limit() -> None:
    assert "at most" in _refused(spending_limit_cents=10**11 + 1)


def test_check_settings_refuses_non_bool_enabled() -> None:
    msg = _refused(enabled=1)
    assert "enabled" in msg and "true or false" in msg
    assert "enabled" in _refused(enabled="yes")
