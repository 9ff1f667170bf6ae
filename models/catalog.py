"""The catalog (plans, tiers, price book, packs, the price of any amount of credits) as validated,
versioned data.

The current catalog lives in catalog.toml beside this file; `load_catalog` validates any other file the
same way, so a platform team can ship its own catalog and get a clear error at start rather than a wrong
charge later.

**Versions.** Every catalog carries a `version` (an integer from 1). `CATALOGS` holds every version this
worker knows, each immutable: catalog.toml (the current one, the highest) and the earlier versions kept in
catalogs/v{N}.toml beside it (catalogs/README.md says how to publish a new version). Like Kill Bill's
versioned catalog, a price never changes under a running workflow: workflows price from immutable data, a
version they name (`CATALOGS.get(n)`), never from "whatever the file says today", so a replay reprices
exactly as the first run did, and a subscriber priced on version 1 keeps it while version 2 is current.
A version is published once: a new one must be higher than every known one; publishing the same
content again is a no-op; other content under a known number is refused. `CATALOGS.publish` also lets a
test (or an operator's tool) add a version in-process; `Catalog.revised` builds one from another with
some prices changed, validated as a file is.

`CATALOG` is the current catalog at import (version 1 by default): what code that does not deal in
versions uses.

**Quotas** (`[plans.<plan>.quotas]`, models/quota_types.py): non-credit limits per plan, `<name> = { limit =
"<decimal>", hard = <bool> }`. Like the price book, they are read from the CURRENT catalog for every organization
(the Ledger's catalog): catalog versions grandfather seat prices and allocations only, so a quota changed in a new
version applies to every organization at once.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from models.checks import shown
from models.credits import to_milli
from models.errors import InvalidRequest
from models.money import round_cents
from models.quota_types import check_quota_amount, check_quota_name

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")
# Earlier versions, kept so that what was priced on them is priced the same (catalogs/README.md).
CATALOG_VERSIONS = Path(__file__).with_name("catalogs")
_VERSION_FILE = re.compile(r"v([1-9][0-9]{0,8})\.toml")

# A per-credit price: cents with at most this many decimal places (0.4, 0.0125), from above 0 to the bound.
PRICE_PLACES = 6
MAX_CREDIT_PRICE_CENTS = Decimal(10**6)
# One purchase of credits is at most Stripe's largest charge (999,999.99 in a two-decimal currency).
MAX_PURCHASE_CENTS = 99_999_999


def _exact_credits(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("credits cannot be negative")
    to_milli(value)  # raises if finer than a milli-credit
    return value


Credits = Annotated[Decimal, Field(strict=False), AfterValidator(_exact_credits)]


def _cents_price(value: object) -> Decimal:
    """A price in cents that may have a fraction: a decimal string ("20", "0.4") or an integer; never a float
    (TOML's 0.2 is a binary fraction). Finite, above 0, at most PRICE_PLACES decimal places, bounded."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"a price in cents is a decimal string such as \"20\" or \"0.4\", got {shown(value)}")
    try:
        price = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise ValueError(f"not a price in cents: {shown(value)}") from None
    if not price.is_finite() or not Decimal(0) < price <= MAX_CREDIT_PRICE_CENTS:
        raise ValueError(f"a price in cents is above 0 and at most {MAX_CREDIT_PRICE_CENTS}, got {shown(value)}")
    exponent = price.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > PRICE_PLACES:
        raise ValueError(f"a price in cents has at most {PRICE_PLACES} decimal places, got {shown(value)}")
    return price


CentsPrice = Annotated[Decimal, BeforeValidator(_cents_price)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quota_limit(value: object) -> Decimal:
    try:
        return check_quota_amount("a quota's limit", value)  # a decimal string ("10000", "0.5") or an integer
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None


class Quota(_Strict):
    """A plan's limit of a quota per period: `hard` refuses a record past it, else it is counted past it."""

    limit: Annotated[Decimal, BeforeValidator(_quota_limit)]
    hard: bool = Field(strict=True)


class Plan(_Strict):
    name: str = ""
    rank: int = Field(ge=0)
    price_cents_per_seat: int = Field(ge=0)
    # Percent off 12 months of the monthly price for annual billing; None: the catalog's top-level default.
    annual_discount_percent: int | None = Field(default=None, ge=0, lt=100)
    min_seats: int = Field(ge=1)
    max_seats: int | None = Field(default=None, ge=1)
    credits: Credits
    credits_per: Literal["day", "month"]
    tiers: tuple[str, ...] = Field(min_length=1)
    max_concurrent_holds: int = Field(ge=1)
    # Quotas per period (the free plan's: per UTC day); a quota left out is unlimited on this plan.
    quotas: dict[str, Quota] = {}

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


class CreditPrice(_Strict):
    """Any amount of credits (seed 004): `price_cents` per credit, fractional cents allowed (the total is
    rounded half-up to the cent once), at least `minimum` credits per purchase."""

    price_cents: CentsPrice = Decimal(20)
    minimum: Credits = Decimal(100)

    @model_validator(mode="after")
    def _minimum_costs_something(self) -> CreditPrice:
        if self.minimum <= 0:
            raise ValueError("credits.minimum must be above 0")
        if round_cents(self.minimum * self.price_cents) < 1:
            raise ValueError(f"credits.minimum ({self.minimum}) at {self.price_cents} cents each costs less than "
                             "a cent: raise the minimum or the price")
        return self


class Catalog(_Strict):
    version: int = Field(ge=1, le=10**9)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    # The default of plans that set no annual_discount_percent of their own.
    annual_discount_percent: int = Field(default=0, ge=0, lt=100)
    tiers: dict[str, int]
    plans: dict[str, Plan]
    actions: dict[str, Action]
    sms_countries: dict[str, Credits] = {}
    packs: dict[str, Pack]
    credits: CreditPrice = CreditPrice()

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        if "free" not in self.plans:
            raise ValueError("the catalog needs a 'free' plan: cancelled and lapsed organizations land on it")
        for name, plan in self.plans.items():
            object.__setattr__(plan, "name", name)
            if plan.annual_discount_percent is None:
                object.__setattr__(plan, "annual_discount_percent", self.annual_discount_percent)
            unknown = set(plan.tiers) - set(self.tiers)
            if unknown:
                raise ValueError(f"plan {name!r} names unknown tiers {sorted(unknown)}")
            if plan.max_seats is not None and plan.max_seats < plan.min_seats:
                raise ValueError(f"plan {name!r}: max_seats below min_seats")
            for quota in plan.quotas:
                try:
                    check_quota_name(quota)
                except InvalidRequest as exc:
                    raise ValueError(f"plan {name!r}: {exc.message}") from None
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

    @cached_property
    def quota_names(self) -> tuple[str, ...]:
        """Every quota some plan lists, in the order the plans list them."""
        return tuple(dict.fromkeys(q for plan in self.plans.values() for q in plan.quotas))

    def check_quota(self, name: object) -> str:
        """A quota some plan lists (counted for every organization; limited where its plan says)."""
        if not isinstance(name, str) or name not in self.quota_names:
            known = ", ".join(self.quota_names) or "none"
            raise InvalidRequest(f"unknown quota {shown(name)}; known quotas: {known}")
        return name

    # -- any amount of credits ------------------------------------------------------------------------
    def check_credits(self, credits: object) -> Decimal:
        """An amount of credits one may buy: a Decimal (or int) of at most 3 decimal places, at least the
        catalog's minimum, and costing at most MAX_PURCHASE_CENTS. InvalidRequest says what is wrong."""
        if isinstance(credits, bool) or not isinstance(credits, Decimal | int):
            raise InvalidRequest(f"credits must be a Decimal number of credits (e.g. Decimal('100')), "
                                 f"got {shown(credits)}")
        to_milli(credits)  # finite, at most 3 decimal places, within any wallet
        amount = Decimal(credits)
        if amount < self.credits.minimum:
            raise InvalidRequest(f"at least {self.credits.minimum} credits per purchase, got {shown(credits)}")
        cents = round_cents(amount * self.credits.price_cents)
        if cents > MAX_PURCHASE_CENTS:
            raise InvalidRequest(f"{shown(credits)} credits would cost {cents:,} cents: one purchase is at most "
                                 f"{MAX_PURCHASE_CENTS:,} cents")
        return amount

    def credits_cents(self, credits: Decimal) -> int:
        """What `credits` cost, in cents, rounded half-up once (0.20 each: 100 credits for 2000)."""
        return round_cents(self.check_credits(credits) * self.credits.price_cents)

    def credit_amount(self, credits: Decimal) -> Pack:
        """An amount of credits as the pack it is bought as (its credits, its price): a purchase or an
        auto-recharge of an amount goes the way a pack goes."""
        return Pack(credits=self.check_credits(credits), price_cents=self.credits_cents(credits))

    # -- versions -------------------------------------------------------------------------------------
    def revised(self, *, version: int, **changes: Any) -> Catalog:
        """A new catalog: this one with `changes` merged in (nested mappings merge key by key, anything else
        replaces) under `version`, validated as a file is. E.g.
        `catalog.revised(version=2, plans={"pro": {"price_cents_per_seat": 9900}})`. Pure: publish it with
        `CATALOGS.publish`."""
        data = _merged(self.model_dump(), {**changes, "version": version})
        for plan in data.get("plans", {}).values():
            if isinstance(plan, dict):
                plan.pop("name", None)  # set from its key
        try:
            return Catalog.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid catalog version {shown(version)}: {exc}") from None


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def load_catalog(path: Path = DEFAULT_CATALOG) -> Catalog:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Catalog.model_validate(data)
    except (ValidationError, tomllib.TOMLDecodeError, UnicodeDecodeError, InvalidRequest) as exc:
        raise InvalidRequest(f"invalid catalog {path}: {exc}") from exc


class CatalogRegistry:
    """Every catalog version this process knows, each immutable once published."""

    def __init__(self, catalogs: tuple[Catalog, ...] = ()) -> None:
        self._versions: dict[int, Catalog] = {}
        for catalog in sorted(catalogs, key=lambda c: c.version):
            self.publish(catalog)

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._versions))

    @property
    def current(self) -> Catalog:
        """The newest version: what a new subscription or purchase is priced on."""
        if not self._versions:
            raise InvalidRequest("no catalog version is published")
        return self._versions[max(self._versions)]

    def get(self, version: int) -> Catalog:
        if isinstance(version, int) and not isinstance(version, bool) and version in self._versions:
            return self._versions[version]
        known = ", ".join(str(v) for v in self.versions) or "none"
        raise InvalidRequest(f"unknown catalog version {shown(version)}; known versions: {known}")

    def publish(self, catalog: Catalog) -> Catalog:
        """Add `catalog` as a new version (higher than every known one). The same content under a known
        number is a no-op (returns the known one); other content under it is refused."""
        if not isinstance(catalog, Catalog):
            raise InvalidRequest(f"only a Catalog can be published, got {shown(catalog)}")
        known = self._versions.get(catalog.version)
        if known is not None:
            if known == catalog:
                return known
            raise InvalidRequest(f"catalog version {catalog.version} is already published with other content: "
                                 "a published version never changes; publish the change as a new version")
        if self._versions and catalog.version < max(self._versions):
            raise InvalidRequest(f"catalog version {catalog.version} is older than the current version "
                                 f"{max(self._versions)}: a new version must be higher than every known one")
        self._versions[catalog.version] = catalog
        return catalog

    @contextmanager
    def published_for_test(self, catalog: Catalog) -> Iterator[Catalog]:
        """Tests only: `catalog` published for the block, withdrawn after it (so later tests in the process
        see the catalog they expect). Anything still priced on it after the block fails to find it."""
        fresh = catalog.version not in self._versions
        published = self.publish(catalog)
        try:
            yield published
        finally:
            if fresh:
                self._versions.pop(catalog.version, None)


def load_catalogs(current: Path = DEFAULT_CATALOG, earlier: Path = CATALOG_VERSIONS) -> CatalogRegistry:
    """The versions shipped with the worker: `current` (the newest) and `earlier`/v{N}.toml, each file's
    version the number in its name. Refused (InvalidRequest) when a file is invalid, misnamed or newer
    than `current`."""
    newest = load_catalog(current)
    catalogs = [newest]
    files = sorted(earlier.glob("*.toml")) if earlier.is_dir() else []
    for path in files:
        named = _VERSION_FILE.fullmatch(path.name)
        if named is None:
            raise InvalidRequest(f"invalid catalog {path}: earlier versions are named v{{N}}.toml")
        catalog = load_catalog(path)
        if catalog.version != int(named.group(1)):
            raise InvalidRequest(f"invalid catalog {path}: it says version {catalog.version}")
        if catalog.version >= newest.version:
            raise InvalidRequest(f"invalid catalog {path}: version {catalog.version} is not older than the current "
                                 f"{current.name} (version {newest.version})")
        catalogs.append(catalog)
    return CatalogRegistry(tuple(catalogs))


CATALOGS = load_catalogs()
CATALOG = CATALOGS.current
