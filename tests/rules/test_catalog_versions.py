"""The catalog's versions, per-plan annual discounts and the price of any amount of credits (issue 12): pure
rules over the catalog data, no database."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from models.auto_recharge import check_settings, credit_lines, decode_buys, encode_buys, per_credit, recharge_unit
from models.catalog import (
    CATALOG,
    CATALOGS,
    DEFAULT_CATALOG,
    MAX_PURCHASE_CENTS,
    Catalog,
    CatalogRegistry,
    load_catalog,
    load_catalogs,
)
from models.errors import InvalidRequest
from models.subscription_rules import seat_price_cents

D = Decimal
DEFAULT_TEXT = DEFAULT_CATALOG.read_text()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- versions ------------------------------------------------------------------------------------------------


def test_the_shipped_catalog_is_version_1_and_current() -> None:
    assert CATALOG.version == 1
    assert CATALOGS.versions == (1,)
    assert CATALOGS.current is CATALOG and CATALOGS.get(1) is CATALOG


def test_an_unknown_version_is_refused_naming_the_known_ones() -> None:
    for bad in (2, 0, -1, "1", True, None):
        with pytest.raises(InvalidRequest, match=r"unknown catalog version .*known versions: 1"):
            CATALOGS.get(bad)  # type: ignore[arg-type]


def test_a_revised_catalog_changes_only_what_it_says_and_leaves_the_original_alone() -> None:
    v2 = CATALOG.revised(version=2, plans={"pro": {"price_cents_per_seat": 9900}})
    assert (v2.version, v2.plan("pro").price_cents_per_seat, v2.plan("pro").name) == (2, 9900, "pro")
    assert v2.plan("pro").credits == D(10000) and v2.plan("starter") == CATALOG.plan("starter")
    assert v2.packs == CATALOG.packs and v2.credits == CATALOG.credits
    assert CATALOG.plan("pro").price_cents_per_seat == 9000  # immutable: the source did not move
    v3 = v2.revised(version=3, credits={"price_cents": "0.4"}, packs={"500": {"price_cents": 2400}})
    assert (v3.credits.price_cents, v3.credits.minimum, v3.pack("500").price_cents) == (D("0.4"), D(100), 2400)


@pytest.mark.parametrize(("changes", "message"), [
    ({"plans": {"pro": {"price_cents_per_seat": -1}}}, "greater than or equal to 0"),
    ({"plans": {"pro": {"annual_discount_percent": 100}}}, "less than 100"),
    ({"plans": {"pro": {"tiers": ["warp"]}}}, "unknown tiers"),
    ({"credits": {"price_cents": 0.2}}, "decimal string"),
    ({"credits": {"price_cents": "0"}}, "above 0"),
    ({"credits": {"price_cents": "0.0000001"}}, "6 decimal places"),
    ({"credits": {"price_cents": "NaN"}}, "above 0"),
    ({"credits": {"minimum": "0"}}, "above 0"),
    ({"credits": {"price_cents": "0.001", "minimum": "1"}}, "less than a cent"),
    ({"sizes": 3}, "Extra inputs"),
])
def test_a_revision_is_validated_as_a_file_is(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        CATALOG.revised(version=2, **changes)


def test_publishing_versions_in_order_identical_again_and_refusals() -> None:
    registry = CatalogRegistry((CATALOG,))
    v2 = CATALOG.revised(version=2, plans={"pro": {"price_cents_per_seat": 9900}})
    assert registry.publish(v2) is v2
    assert registry.current is v2 and registry.versions == (1, 2)
    assert registry.get(1) is CATALOG and registry.get(1).plan("pro").price_cents_per_seat == 9000
    # The same content again is a no-op (an equal copy answers the known one).
    again = CATALOG.revised(version=2, plans={"pro": {"price_cents_per_seat": 9900}})
    assert again is not v2 and registry.publish(again) is v2 and registry.versions == (1, 2)
    # Other content under a known number is refused, whatever the number.
    with pytest.raises(InvalidRequest, match="version 2 is already published with other content"):
        registry.publish(CATALOG.revised(version=2, plans={"pro": {"price_cents_per_seat": 9800}}))
    with pytest.raises(InvalidRequest, match="version 1 is already published"):
        registry.publish(v2.revised(version=1))
    # A version below the newest is refused even when unknown.
    registry.publish(CATALOG.revised(version=5))
    with pytest.raises(InvalidRequest, match="older than the current version 5"):
        registry.publish(CATALOG.revised(version=4))
    with pytest.raises(InvalidRequest, match="only a Catalog"):
        registry.publish({"version": 6})  # type: ignore[arg-type]
    assert list(registry.versions) == [1, 2, 5] and registry.get(2) is v2
    assert CATALOGS.versions == (1,)  # the process's registry never saw any of this


def test_a_version_published_for_a_test_is_withdrawn_after_it() -> None:
    registry = CatalogRegistry((CATALOG,))
    with registry.published_for_test(CATALOG.revised(version=2)) as v2:
        assert registry.current is v2
    assert registry.current is CATALOG and registry.versions == (1,)
    with pytest.raises(InvalidRequest, match="no catalog version"):
        _ = CatalogRegistry().current


def test_versions_ship_as_files_beside_the_current_one(tmp_path: Path) -> None:
    earlier = tmp_path / "catalogs"
    earlier.mkdir()
    write(earlier / "v1.toml", DEFAULT_TEXT)
    current = write(tmp_path / "catalog.toml", DEFAULT_TEXT.replace("version = 1", "version = 2", 1)
                    .replace("price_cents_per_seat = 9000", "price_cents_per_seat = 9900", 1))
    registry = load_catalogs(current, earlier)
    assert registry.versions == (1, 2)
    assert (registry.get(1).plan("pro").price_cents_per_seat, registry.current.plan("pro").price_cents_per_seat) \
        == (9000, 9900)
    assert load_catalogs(DEFAULT_CATALOG, tmp_path / "none").versions == (1,)  # no directory: the current alone


@pytest.mark.parametrize(("name", "text", "message"), [
    ("1.toml", DEFAULT_TEXT, "named v{N}.toml"),
    ("v3.toml", DEFAULT_TEXT, "it says version 1"),
    ("v2.toml", DEFAULT_TEXT.replace("version = 1", "version = 2", 1), "not older than the current"),
    ("v1.toml", DEFAULT_TEXT.replace("version = 1\n", "", 1), "version"),
])
def test_a_misfiled_version_is_refused_at_load(tmp_path: Path, name: str, text: str, message: str) -> None:
    earlier = tmp_path / "catalogs"
    earlier.mkdir()
    write(earlier / name, text)
    current = write(tmp_path / "catalog.toml", DEFAULT_TEXT.replace("version = 1", "version = 2", 1))
    with pytest.raises(InvalidRequest, match=message):
        load_catalogs(current, earlier)


@pytest.mark.parametrize("line", ["", "version = 0", "version = -3", 'version = "one"', "version = 1.5"])
def test_a_catalog_without_a_good_version_is_refused(tmp_path: Path, line: str) -> None:
    text = DEFAULT_TEXT.replace("version = 1\n", line + "\n", 1)
    with pytest.raises(InvalidRequest, match="version"):
        load_catalog(write(tmp_path / "catalog.toml", text))


# -- annual discount per plan --------------------------------------------------------------------------------


def test_the_default_catalog_keeps_20_percent_off_every_paid_plan() -> None:
    assert {n: p.annual_discount_percent for n, p in CATALOG.plans.items()} == \
        {"free": 0, "starter": 20, "pro": 20, "enterprise": 20}
    assert [seat_price_cents(CATALOG, CATALOG.plan(p), "year") for p in ("starter", "pro", "enterprise")] == \
        [47040, 86400, 192000]                      # 12 x 49.00, 90.00, 200.00, less 20%
    assert seat_price_cents(CATALOG, CATALOG.plan("pro"), "month") == 9000


def test_seed_003_at_10_percent_and_seed_000_at_20_percent_in_one_catalog() -> None:
    """Salestools' annual billing is 10% off, Clozup's 20%: two plans of one catalog, each its own discount."""
    catalog = CATALOG.revised(version=2, plans={
        "salestools_professional": {"rank": 2, "price_cents_per_seat": 5900, "annual_discount_percent": 10,
                                    "min_seats": 1, "max_seats": 50, "credits": "2000", "credits_per": "month",
                                    "tiers": ["fast", "smart"], "max_concurrent_holds": 10},
        "pro": {"annual_discount_percent": 20},
    })
    salestools, clozup = catalog.plan("salestools_professional"), catalog.plan("pro")
    assert seat_price_cents(catalog, salestools, "year") == 63720   # 12 x 59.00 = 708.00, less 10%
    assert seat_price_cents(catalog, clozup, "year") == 86400       # 12 x 90.00 = 1,080.00, less 20%
    assert seat_price_cents(catalog, salestools, "month") == 5900
    # An odd price rounds half-up once: 12 x 33.33 = 399.96, less 15% = 339.966 -> 339.97.
    odd = catalog.revised(version=3, plans={"pro": {"price_cents_per_seat": 3333, "annual_discount_percent": 15}})
    assert seat_price_cents(odd, odd.plan("pro"), "year") == 33997


def test_a_catalog_level_discount_is_the_default_of_plans_without_their_own(tmp_path: Path) -> None:
    """A catalog written before discounts were per plan (one top-level annual_discount_percent) still loads."""
    text = DEFAULT_TEXT.replace("annual_discount_percent = 20   # annual billing: 12 months at 20% off\n", "")
    text = text.replace('currency = "EUR"', 'currency = "EUR"\nannual_discount_percent = 25', 1)
    catalog = load_catalog(write(tmp_path / "catalog.toml", text))
    assert {n: p.annual_discount_percent for n, p in catalog.plans.items()} == \
        {"free": 25, "starter": 25, "pro": 25, "enterprise": 25}
    assert seat_price_cents(catalog, catalog.plan("pro"), "year") == 81000


# -- any amount of credits ------------------------------------------------------------------------------------


def test_the_default_price_is_20_cents_a_credit_from_100_credits() -> None:
    data = tomllib.loads(DEFAULT_TEXT)
    assert data["credits"] == {"price_cents": "20", "minimum": "100"}
    assert (CATALOG.credits.price_cents, CATALOG.credits.minimum) == (D(20), D(100))
    assert CATALOG.credits_cents(D(100)) == 2000        # 100 credits for EUR 20.00
    assert CATALOG.credits_cents(D(250)) == 5000
    assert CATALOG.credits_cents(D("100.5")) == 2010
    assert CATALOG.credits_cents(D("123.456")) == 2469  # 2469.12 cents -> 2469
    assert CATALOG.credits_cents(D("100.025")) == 2001  # 2000.5 -> 2001: half-up
    amount = CATALOG.credit_amount(D(250))
    assert (amount.credits, amount.price_cents) == (D(250), 5000)


def test_fractional_cents_round_half_up_once_on_the_total() -> None:
    catalog = CATALOG.revised(version=2, credits={"price_cents": "0.4", "minimum": "5"})
    assert catalog.credits_cents(D(5000)) == 2000       # 5,000 x 0.4 cents = EUR 20.00
    assert catalog.credits_cents(D(1001)) == 400        # 400.4 -> 400
    assert catalog.credits_cents(D("1001.25")) == 401   # 400.5 -> 401
    assert catalog.credits_cents(D(5)) == 2
    fine = CATALOG.revised(version=3, credits={"price_cents": "0.0125", "minimum": "100"})
    assert fine.credits_cents(D(100)) == 1 and fine.credits_cents(D(140)) == 2  # 1.25 -> 1; 1.75 -> 2


@pytest.mark.parametrize(("credits", "message"), [
    (D(99), "at least 100 credits per purchase, got Decimal\\('99'\\)"),
    (D("99.999"), "at least 100 credits"),
    (D(0), "at least 100"),
    (D(-100), "at least 100"),
    (D("100.0001"), "3 decimal places"),
    (D("NaN"), "finite"),
    (D("Infinity"), "finite"),
    (D("1E+13"), "more than any wallet"),
    (D(500_000_000), "at most 99,999,999 cents"),
    (100.0, "Decimal number of credits"),
    ("100", "Decimal number of credits"),
    (True, "Decimal number of credits"),
    (None, "Decimal number of credits"),
])
def test_a_bad_amount_is_refused_with_a_clear_message(credits: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        CATALOG.check_credits(credits)


def test_the_largest_purchase_is_stripes_largest_charge() -> None:
    assert CATALOG.credits_cents(D("4999999.95")) == MAX_PURCHASE_CENTS == 99_999_999
    with pytest.raises(InvalidRequest, match="would cost 100,000,000 cents"):
        CATALOG.check_credits(D("4999999.975"))
    assert CATALOG.check_credits(D(100)) == D(100) and CATALOG.check_credits(250) == D(250)


def test_an_invoice_line_says_what_was_bought() -> None:
    [line] = credit_lines(CATALOG.credit_amount(D(250)), 1, CATALOG.credits.price_cents, "EUR")
    assert (line.description, line.quantity, line.unit_cents, line.amount_cents) == \
        ("Credits: 250 at EUR 0.20 each (never expire)", 1, 5000, 5000)
    [twice] = credit_lines(CATALOG.credit_amount(D("100.5")), 2, CATALOG.credits.price_cents, "EUR")
    assert (twice.description, twice.quantity, twice.unit_cents, twice.amount_cents) == \
        ("Credits: 100.5 at EUR 0.20 each (never expire)", 2, 2010, 4020)
    assert [per_credit(D(p), "EUR") for p in ("20", "0.4", "0.0125", "150", "2000")] == \
        ["EUR 0.20", "EUR 0.004", "EUR 0.000125", "EUR 1.50", "EUR 20.00"]


# -- auto-recharge by an amount --------------------------------------------------------------------------------


def test_auto_recharge_settings_take_a_pack_or_an_amount_not_both() -> None:
    base: dict[str, Any] = {"threshold": D(100), "spending_limit_cents": 5000, "enabled": True}
    assert check_settings(CATALOG, pack=None, credits=D(250), **base) == D(100)
    for pack, credits in (("500", D(250)), (None, None)):
        with pytest.raises(InvalidRequest, match="exactly one of pack and credits"):
            check_settings(CATALOG, pack=pack, credits=credits, **base)
    with pytest.raises(InvalidRequest, match="at least 100 credits"):
        check_settings(CATALOG, pack=None, credits=D(99), **base)
    with pytest.raises(InvalidRequest, match="Decimal number of credits"):
        check_settings(CATALOG, pack=None, credits=250.0, **base)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=r"cannot buy even one 250 credits \(5000 cents\).*smaller amount"):
        check_settings(CATALOG, pack=None, credits=D(250), **{**base, "spending_limit_cents": 4999})


def test_what_auto_recharge_buys_is_stored_and_read_back_exactly() -> None:
    for pack, credits, column in (("500", None, "500"), (None, D(250), "credits:250"),
                                  (None, D("100.500"), "credits:100.5"), (None, D("1E+3"), "credits:1000")):
        assert encode_buys(pack, credits) == column
        got = decode_buys(column)
        assert got[0] == pack and got[1] == credits
    unit = recharge_unit(CATALOG, "", D(250))
    assert unit is not None and (unit.credits, unit.price_cents) == (D(250), 5000)
    assert recharge_unit(CATALOG, "500", None) == CATALOG.pack("500")
    assert recharge_unit(CATALOG, "750", None) is None       # a pack the catalog no longer sells: off
    assert recharge_unit(CATALOG, "", D(50)) is None         # under the catalog's minimum now: off


def test_the_default_catalog_is_still_equal_to_itself_when_loaded_again() -> None:
    assert load_catalog() == CATALOG and isinstance(CATALOG, Catalog)
