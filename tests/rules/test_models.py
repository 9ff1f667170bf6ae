"""Pure domain rules: credits, money, catalog validation, pricing. No database."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from models.catalog import CATALOG, DEFAULT_CATALOG, load_catalog
from models.credits import from_milli, to_milli
from models.errors import InvalidRequest
from models.money import Money, round_cents
from models.pricing import cost_milli, unit_cost_milli

D = Decimal


def test_credits_are_exact_milli_and_never_floats() -> None:
    assert to_milli(D("0.5")) == 500
    assert to_milli("17") == 17000
    assert to_milli(3) == 3000
    assert from_milli(450) == D("0.450")
    for bad in (0.5, D("0.0001"), "abc", D("NaN"), True):
        with pytest.raises(InvalidRequest):
            to_milli(bad)  # type: ignore[arg-type]


def test_money_rounds_half_up_and_prints_plainly() -> None:
    assert round_cents(D("26999.5")) == 27000
    assert round_cents(D("26999.49")) == 26999
    assert str(Money(27000)) == "EUR 270.00"
    assert str(Money(-150, "USD")) == "USD -1.50"
    with pytest.raises(TypeError):
        Money(1.5)  # type: ignore[arg-type]


def test_default_catalog_is_the_design() -> None:
    plans = {n: (p.price_cents_per_seat, p.max_seats, p.credits, p.credits_per, p.tiers, p.max_concurrent_holds)
             for n, p in CATALOG.plans.items()}
    assert plans == {
        "free": (0, 1, D("50"), "day", ("fast",), 1),
        "starter": (4900, 5, D("3000"), "month", ("fast", "smart"), 5),
        "pro": (9000, 25, D("10000"), "month", ("fast", "smart", "pro"), 20),
        "enterprise": (20000, None, D("40000"), "month", ("fast", "smart", "pro", "ultra"), 100),
    }
    assert {n: (p.credits, p.price_cents) for n, p in CATALOG.packs.items()} == {
        "500": (D("500"), 2500), "1000": (D("1000"), 4500), "2500": (D("2500"), 10000),
        "5000": (D("5000"), 17500)}
    assert CATALOG.tiers == {"fast": 1, "smart": 5, "pro": 15, "ultra": 60}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (('tiers = ["fast", "smart"]', 'tiers = ["fast", "warp"]'), "unknown tiers"),
        (('includes = ["phone_validation", "email_validation"]', 'includes = ["teleport"]'), "unknown action"),
        (('[packs.500]\ncredits = "500"', '[packs.500]\ncredits = "600"'), "named by its credits"),
        (('[actions.email_validation]\ncredits = "0.5"', '[actions.email_validation]\ncredits = "0.0005"'),
         "3 decimal places"),
        (('price_cents = 2500', 'price_cents = -1'), "greater than 0"),
        (('[plans.free', '[plans.gratis'), "'free' plan"),  # [plans.free] and [plans.free.quotas]
    ],
)
def test_a_bad_catalog_is_refused_at_load_with_a_clear_message(
    tmp_path: Path, patch: tuple[str, str], message: str
) -> None:
    text = DEFAULT_CATALOG.read_text()
    assert patch[0] in text
    bad = tmp_path / "catalog.toml"
    bad.write_text(text.replace(patch[0], patch[1]))
    with pytest.raises(InvalidRequest, match=message):
        load_catalog(bad)


@pytest.mark.parametrize(
    ("action", "tier", "country", "milli"),
    [
        ("ai_chat", "fast", None, 1000), ("ai_chat", "ultra", None, 60000), ("insight", "pro", None, 150000),
        ("email_generation", "smart", None, 10000), ("sequence_step", "smart", None, 5000),
        ("lead_enrichment", None, None, 5000), ("call_transcription", None, None, 3000),
        ("email_validation", None, None, 500), ("phone_validation", None, None, 1500),
        ("credit_score", None, None, 17000), ("dti", None, None, 26000),
        ("sms", None, "FR", 450), ("sms", None, "BE", 620), ("sms", None, "DE", 580), ("sms", None, "ES", 400),
        ("sms", None, "GB", 250), ("sms", None, "US", 50), ("sms", None, "IN", 30), ("crm_sync", None, None, 0),
    ],
)
def test_price_book(action: str, tier: str | None, country: str | None, milli: int) -> None:
    assert unit_cost_milli(action, tier, country) == milli


def test_quantities_multiply_exactly_and_fractions_round_half_up() -> None:
    assert cost_milli("sms", 3, country="FR") == 1350
    assert cost_milli("call_transcription", D("2.5")) == 7500
    assert cost_milli("email_validation", D("0.001")) == 1  # 0.5 milli rounds half-up to 1
    assert cost_milli("ai_chat", 1000, tier="ultra") == 60_000_000
