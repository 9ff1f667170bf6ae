"""The cost of an action in milli-credits, from the price book. Pure."""

from __future__ import annotations

from decimal import Decimal

from models.catalog import CATALOG, Catalog
from models.checks import shown
from models.credits import round_milli, to_milli
from models.errors import InvalidRequest

MAX_QUANTITY = 10**12  # units of one action in one call


def validate_quantity(quantity: int | Decimal) -> Decimal:
    if isinstance(quantity, float | bool) or not isinstance(quantity, int | Decimal):
        raise InvalidRequest(f"quantity must be an int or Decimal, not {type(quantity).__name__}")
    q = Decimal(quantity)
    if not q.is_finite() or q <= 0:
        raise InvalidRequest(f"quantity must be positive, got {shown(quantity)}")
    if q > MAX_QUANTITY:  # the cost bound refuses it anyway; this keeps Decimal arithmetic in its precision
        raise InvalidRequest(f"quantity {shown(quantity)} is more than the {MAX_QUANTITY:,} units one call may meter")
    return q


def unit_cost_milli(
    action: str, tier: str | None = None, country: str | None = None, catalog: Catalog = CATALOG
) -> int:
    """Milli-credits for one unit of `action`: base x tier multiplier + included checks."""
    spec = catalog.action(action)
    if spec.by_country:
        if not country:
            raise InvalidRequest(f"action {action!r} is priced by destination country: pass country='FR'")
        try:
            base = to_milli(catalog.sms_countries[country.upper()])
        except KeyError:
            raise InvalidRequest(f"no {action} price for country {country!r}") from None
    else:
        if country is not None:
            raise InvalidRequest(f"action {action!r} does not take a country")
        assert spec.credits is not None
        base = to_milli(spec.credits)
    if spec.tiered:
        if tier is None:
            raise InvalidRequest(f"action {action!r} needs a model tier: one of {', '.join(catalog.tiers)}")
        if tier not in catalog.tiers:
            raise InvalidRequest(f"unknown model tier {tier!r}; known tiers: {', '.join(catalog.tiers)}")
        base *= catalog.tiers[tier]
    elif tier is not None:
        raise InvalidRequest(f"action {action!r} is not tiered; do not pass a tier")
    return base + sum(unit_cost_milli(inc, catalog=catalog) for inc in spec.includes)


def cost_milli(
    action: str,
    quantity: int | Decimal = 1,
    tier: str | None = None,
    country: str | None = None,
    catalog: Catalog = CATALOG,
) -> int:
    """Total milli-credits for `quantity` units; fractional quantities round half-up to a milli-credit."""
    return units_cost_milli(unit_cost_milli(action, tier, country, catalog), validate_quantity(quantity))


def units_cost_milli(unit_milli: int, quantity: Decimal) -> int:
    if quantity == quantity.to_integral_value():
        return unit_milli * int(quantity)  # exact, and the common case
    return round_milli(Decimal(unit_milli) * quantity / 1000)
