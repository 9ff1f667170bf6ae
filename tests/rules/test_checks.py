"""The entry rules of models/checks.py: one email rule and one rate rule for every step that uses them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.checks import check_email, check_rate
from models.errors import InvalidRequest


@pytest.mark.parametrize("good", ["ops@acme.test", "billing+eu@acme.example", "a.b-c@x.io"])
def test_a_bare_address_is_an_email(good: str) -> None:
    assert check_email("email", good) == good


@pytest.mark.parametrize("bad", ["<ops@acme.test>", "Ops <ops@acme.test>", "ops@acme", "ops@@acme.test",
                                 "ops @acme.test", "ops@acme.test ", "nobody", "", 7, None])
def test_anything_else_is_refused_typed(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="not an email address"):
        check_email("email", bad)


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-0.1"), Decimal(1),
                                 0.2, "0.2", None])
def test_a_rate_is_a_finite_decimal_fraction(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="fraction"):
        check_rate("vat_rate", bad)
    assert check_rate("vat_rate", Decimal("0.2")) == Decimal("0.2")
