"""The catalog (plans, tiers, price book, packs) as validated data.

The default lives in catalog.toml beside this file; `load_catalog` validates any other file the same
way, so a platform team can ship its own catalog and get a clear error at start rather than a wrong
charge later.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.credits import to_milli
from models.errors import InvalidRequest

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


def _exact_credits(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("credits cannot be negative")
    to_milli(value)  # raises if finer than a milli-credit
    return value


Credits = Annotated[Decimal, Field(strict=False), AfterValidator(_exact_credits)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plan(_Strict):
    name: str = ""
    rank: int = Field(ge=0)
    price_cents_per_seat: int = Field(ge=0)
    min_seats: int = Field(ge=1)
    max_seats: int | None = Field(default=None, ge=1)
    credits: Credits
    credits_per: Literal["day", "month"]
    tiers: tuple[str, ...] = Field(min_length=1)
    max_concurrent_holds: int = Field(ge=1)

    @property
    def credits_milli(self) -> int:
        return to_milli(self.credits)

    @property
    def is_free(self) -> bool:
        return self.price_cents_per_seat == 0


class Action(_Strict):
    credits: Credits | None = None
    tiered: bool = False
    unit: str = "use"
    includes: tuple[str, ...] = ()
    by_country: bool = False

    @model_validator(mode="after")
    def _priced_one_way(self) -> Action:
        if self.by_country == (self.credits is not None):
            raise ValueError("an action has either a fixed `credits` or `by_country = true`, not both")
        return self


class Pack(_Strict):
    credits: Credits
    price_cents: int = Field(gt=0)

    @property
    def credits_milli(self) -> int:
        return to_milli(self.credits)


class Catalog(_Strict):
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    annual_discount_percent: int = Field(ge=0, lt=100)
    tiers: dict[str, int]
    plans: dict[str, Plan]
    actions: dict[str, Action]
    sms_countries: dict[str, Credits] = {}
    packs: dict[str, Pack]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        if "free" not in self.plans:
            raise ValueError("the catalog needs a 'free' plan: cancelled and lapsed organizations land on it")
        for name, plan in self.plans.items():
            object.__setattr__(plan, "name", name)
            unknown = set(plan.tiers) - set(self.tiers)
            if unknown:
                raise ValueError(f"plan {name!r} names unknown tiers {sorted(unknown)}")
            if plan.max_seats is not None and plan.max_seats < plan.min_seats:
                raise ValueError(f"plan {name!r}: max_seats below min_seats")
        if any(m < 1 for m in self.tiers.values()):
            raise ValueError("tier multipliers are positive integers")
        for name, action in self.actions.items():
            for inc in action.includes:
                inner = self.actions.get(inc)
                if inner is None:
                    raise ValueError(f"action {name!r} includes unknown action {inc!r}")
                if inner.includes or inner.tiered or inner.by_country:
                    raise ValueError(f"action {name!r} may only include plain fixed-cost actions")
            if action.by_country and not self.sms_countries:
                raise ValueError(f"action {name!r} is priced by country but sms_countries is empty")
        for name, pack in self.packs.items():
            if to_milli(pack.credits) != to_milli(name):  # a name that is no number: refused by to_milli
                raise ValueError(f"pack {name!r} must be named by its credits ({pack.credits})")
        return self

    # -- lookups that raise the typed error callers expect -------------------------------------
    def plan(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            raise InvalidRequest(f"unknown plan {name!r}; known plans: {', '.join(self.plans)}") from None

    def action(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            raise InvalidRequest(f"unknown action {name!r}; known actions: {', '.join(self.actions)}") from None

    def pack(self, name: str) -> Pack:
        try:
            return self.packs[name]
        except KeyError:
            raise InvalidRequest(f"unknown pack {name!r}; known packs: {', '.join(self.packs)}") from None

    @cached_property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(self.tiers)


def load_catalog(path: Path = DEFAULT_CATALOG) -> Catalog:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Catalog.model_validate(data)
    except (ValidationError, tomllib.TOMLDecodeError, UnicodeDecodeError, InvalidRequest) as exc:
        raise InvalidRequest(f"invalid catalog {path}: {exc}") from exc


CATALOG = load_catalog()
