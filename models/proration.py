"""Proration: what a change mid-period costs. Pure functions over integer cents and whole seconds."""

from __future__ import annotations

from decimal import Decimal

from models.money import round_cents


def prorate_cents(full_cents: int, seconds_left: int, seconds_total: int) -> int:
    """`full_cents` (the price of a whole period) times seconds_left / seconds_total, half-up to the cent."""
    if seconds_total <= 0 or not 0 <= seconds_left <= seconds_total:
        raise ValueError(f"bad proration fraction {seconds_left}/{seconds_total}")
    return round_cents(Decimal(full_cents) * seconds_left / seconds_total)


def upgrade_cents(old_price: int, new_price: int, seats: int, seconds_left: int, seconds_total: int) -> int:
    """An immediate upgrade charges (new - old) x seats for the part of the period left."""
    if new_price <= old_price:
        raise ValueError("an upgrade raises the price per seat")
    return prorate_cents((new_price - old_price) * seats, seconds_left, seconds_total)


def added_seats_cents(price: int, added: int, seconds_left: int, seconds_total: int) -> int:
    """More seats now: price x added seats for the part of the period left."""
    if added <= 0:
        raise ValueError("adding seats needs a positive number of seats")
    return prorate_cents(price * added, seconds_left, seconds_total)
