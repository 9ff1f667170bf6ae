"""The API's JSON shapes (docs/api.md): credits as decimal strings, money as integer cents plus
a currency, UTC RFC 3339 times. Requests forbid unknown members, so a misspelt field is a 422, not ignored.
Answers are built from the engine's own result types (`from_attributes`): a field means what it means there."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, PlainSerializer

from ledger.gateway import MAX_GUARD_USES, MAX_GUARD_WINDOW, MAX_HOLD_TTL
from models.billing_types import Interval, Status
from models.contract_types import ContractTerms
from models.insight_types import LimitSource, SeriesBucket, SeriesBy, UsageSource
from models.ledger_types import UsageGrouping
from models.tags import MAX_TAGS, MAX_VALUE_CHARS

# Credits travel as decimal strings ("12.5"): JSON numbers are floats to most parsers.
Credits = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str, when_used="json")]
CreditsIn = Annotated[Decimal, Field(description="credits, as a decimal string such as \"12.5\"")]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value


# Times leave in UTC whatever the database session's time zone ("2026-01-15T12:00:00Z").
Time = Annotated[datetime, AfterValidator(_utc)]
Currency = Annotated[str, Field(description="ISO 4217 code of the amounts in cents beside it", examples=["EUR"])]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _example(**fields: JsonValue) -> ConfigDict:
    """A request's config with an example (the spec shows it; schemathesis sends it)."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [fields]})


class Answer(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Problem(BaseModel):
    """RFC 9457 problem details. `type` ends with the error's class name (models/errors.py); the error's typed
    fields are members beside these (org_id, cost, available, limit...)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    type: str = Field(examples=["https://billing-engine.dev/problems/InsufficientCredits"])
    title: str = Field(examples=["InsufficientCredits"])
    status: int
    detail: str


# -- metering ----------------------------------------------------------------------------------------------

Quantity = Annotated[Decimal, Field(description="units of the action, a decimal string or an integer")]
Tags = Annotated[dict[str, str] | None, Field(
    description=f"dimensions of this use, stored with it and filtered on by the usage log: at most {MAX_TAGS}, "
    f"names of a-z, 0-9 and _ (1-32, starting with a letter), values 1-{MAX_VALUE_CHARS} characters",
    examples=[{"campaign": "spring", "result": "found"}])]


class DebitIn(Request):
    model_config = _example(action="ai_chat", tier="smart", quantity="1", user_id="u1",
                            tags={"campaign": "spring"})
    action: str
    tier: str | None = None
    quantity: Quantity = Decimal(1)
    user_id: str | None = None
    country: str | None = None
    tags: Tags = None


class DebitOut(Answer):
    org_id: str
    idempotency_key: str
    cost: Credits
    available: Credits | None = Field(description="the balance after this debit; null for a credit-free action")
    replayed: bool


class HoldIn(DebitIn):
    model_config = _example(action="credit_score", user_id="u1", ttl_seconds=600)
    ttl_seconds: int | None = Field(default=None, ge=1, le=int(MAX_HOLD_TTL.total_seconds()),
                                    description="seconds until the hold releases itself (default: the server's "
                                    "BILLING_HOLD_TTL_SECONDS, 900)")


class HoldOut(BaseModel):
    org_id: str
    hold_id: str
    cost: Credits
    available: Credits
    status: Literal["open", "committed", "released"]
    replayed: bool
    concurrency_limit: int = Field(description="the plan's maximum of open holds")
    concurrency_open: int = Field(description="live holds open after this call")


class BalanceOut(Answer):
    org_id: str
    plan_name: str
    available: Credits
    plan: Credits
    topup: Credits
    held: Credits
    allocation: Credits
    consumed_this_period: Credits
    period_start: Time
    period_end: Time | None
    concurrency_limit: int
    concurrency_open: int
    overage: Credits = Field(description="overage recorded this period, invoiced at the next renewal (contracts)")
    overage_cap: Credits | None = Field(description="the most overage allowed (none: no cap, or no overage)")
    overage_allowed: bool
    overage_held: Credits = Field(description="reserved in overage by open holds")


# -- reads ---------------------------------------------------------------------------------------------------

class UsageRowOut(Answer):
    key: str | None = Field(description="the action, tier or user id (null: no tier, no user)")
    uses: int
    quantity: Credits
    credits: Credits


class UsageOut(BaseModel):
    org_id: str
    by: UsageGrouping
    since: Time | None
    until: Time | None
    rows: list[UsageRowOut]


class TransactionOut(Answer):
    id: int
    at: Time
    kind: Literal["grant", "debit", "expire", "adjust", "hold", "release", "overage", "overage_closed"]
    credits: Credits = Field(description="signed: grants positive, debits and expiries negative")
    bucket: str | None
    ref: str


class TransactionsOut(BaseModel):
    org_id: str
    transactions: list[TransactionOut]


class InvoiceLineOut(Answer):
    description: str
    quantity: int
    unit_cents: int
    amount_cents: int


class InvoiceOut(Answer):
    number: str
    org_id: str
    purpose: str
    issued_at: Time
    currency: Currency
    lines: list[InvoiceLineOut]
    subtotal_cents: int
    tax_rate: Credits = Field(description="a decimal fraction such as \"0.20\"")
    tax_cents: int
    total_cents: int
    stripe_payment_id: str = Field(description="the card payment's id (empty for an invoice paid by transfer or open)")
    status: Literal["open", "paid"] = Field(description="open: issued on invoice terms and not yet paid")
    due_at: Time | None = Field(description="an open invoice's due date (invoice payment terms)")
    paid_at: Time | None = Field(description="when an invoice on terms was recorded paid")
    overdue_at: Time | None = Field(description="when its dunning began (a day past due, unpaid)")


class InvoicePaidIn(Request):
    model_config = _example(reference="transfer 2026-03-02 ref 4411")
    reference: str | None = Field(default=None, max_length=200, description="the payment's reference, for the books")


class InvoiceDocumentOut(InvoiceOut):
    html: str


class InvoicesOut(BaseModel):
    org_id: str
    invoices: list[InvoiceOut]


# -- usage insight (api/routes/insight.py) ------------------------------------------------------------------

class UsageEventOut(Answer):
    at: Time
    idempotency_key: str = Field(description="the debit's key; a committed hold's is 'hold:' + the hold's id")
    source: UsageSource
    action: str
    tier: str | None
    quantity: Credits
    country: str | None
    user_id: str | None
    credits: Credits
    tags: dict[str, str]


class UsageEventsOut(BaseModel):
    org_id: str
    events: list[UsageEventOut] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: this is the last one")


class ActionSummaryOut(Answer):
    action: str
    uses: int
    quantity: Credits
    credits: Credits
    credits_per_use: Credits = Field(description="credits / uses, to the milli-credit (half-up)")


class UsageSummaryOut(BaseModel):
    org_id: str
    since: Time | None
    until: Time | None
    user_id: str | None = Field(description="one user's usage only (null: every user)")
    actions: list[ActionSummaryOut] = Field(description="most credits first")


class SeriesPointOut(Answer):
    start: Time = Field(description="the bucket's start (a UTC day or hour)")
    key: str | None = Field(description="the action or user (null: not grouped, or uses without a user)")
    uses: int
    credits: Credits


class UsageSeriesOut(BaseModel):
    org_id: str
    since: Time
    until: Time
    bucket: SeriesBucket
    by: SeriesBy | None
    user_id: str | None
    points: list[SeriesPointOut] = Field(description="every bucket of every key seen in the range, zeros included")


class LifetimeOut(Answer):
    org_id: str
    since: Time = Field(description="when the organization's wallet was opened")
    added: Credits = Field(description="every credit granted: added_plan + added_packs")
    added_plan: Credits
    added_packs: Credits
    used: Credits
    expired: Credits = Field(description="plan credits left unused at a period's end")


class ProjectionOut(Answer):
    period_start: Time
    period_end: Time
    as_of: Time
    allocation: Credits
    consumed: Credits
    burn_per_day: Credits
    projected: Credits = Field(description="used by the period's end at this period's rate so far")
    runs_out_at: Time | None = Field(description="when the allocation is (was) used up at that rate; null: not "
                                                 "within this period")
    exceeds: bool
    runway_alert_due: bool


class ProjectionAnswer(BaseModel):
    org_id: str
    projection: ProjectionOut | None = Field(description="null: the period has no end (nothing to project to)")


class MemberUsageOut(Answer):
    org_id: str
    user_id: str
    period_start: Time
    period_end: Time | None
    used: Credits
    limit: Credits | None
    limit_source: LimitSource | None
    remaining: Credits | None
    by_action: list[ActionSummaryOut]


class RunwayAlertIn(Request):
    model_config = _example(enabled=True)
    enabled: bool


class RunwayAlertOut(BaseModel):
    org_id: str
    enabled: bool


# -- quotas (api/routes/quotas.py) -----------------------------------------------------------------------

QuotaAmount = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str, when_used="json")]


class QuotaRecordIn(Request):
    model_config = _example(quantity="1")
    quantity: Annotated[Decimal, Field(description="units counted against the quota (above 0, at most 3 decimal "
                                                   "places), a decimal string or an integer")] = Decimal(1)


class QuotaResultOut(Answer):
    org_id: str
    quota: str
    idempotency_key: str
    quantity: QuotaAmount
    used: QuotaAmount = Field(description="the quota's use this period, this record included")
    limit: QuotaAmount | None = Field(description="null: the plan sets no limit")
    hard: bool
    replayed: bool
    warning: bool = Field(description="at or past 80% of the limit")


class QuotaUsageOut(Answer):
    quota: str
    used: QuotaAmount
    limit: QuotaAmount | None
    hard: bool = Field(description="past the limit is refused (403 QuotaExceeded); false: counted past it")
    percent: int | None = Field(description="whole percent of the limit used (may pass 100 when soft)")
    warning: bool = Field(description="at or past 80%")
    exceeded: bool = Field(description="at or past 100%")
    period_start: Time


class QuotasOut(BaseModel):
    org_id: str
    quotas: list[QuotaUsageOut]


# -- subscriptions ------------------------------------------------------------------------------------------

class SubscribeIn(Request):
    model_config = _example(plan="pro", seats=3, interval="month", trial_days=0, email="billing@acme.example")
    plan: str
    seats: int = 1
    interval: Interval = "month"
    trial_days: int = 0
    email: str = Field(description="the billing contact")
    payment_method: str | None = Field(default=None, description="a Stripe PaymentMethod id (none: a trial only)")
    vat_rate: Annotated[Decimal, Field(description="a decimal fraction in [0, 1), such as \"0.20\"")] = Decimal(0)


class PlanIn(Request):
    model_config = _example(plan="enterprise")
    plan: str


class SeatsIn(Request):
    model_config = _example(seats=4)
    seats: int


# -- contracts (api/routes/contracts.py) ------------------------------------------------------------------

Multiplier = Decimal
Rate = Decimal


class ContractIn(Request):
    """Contract terms: unset fields leave the plan's own (models/contract_types.py says what each means)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "term_start": "2026-01-01T00:00:00Z", "term_end": "2027-01-01T00:00:00Z", "allowance_multiplier": "1.2",
        "concurrency_multiplier": "1.3", "overage_allowed": True, "overage_rate_cents": "0.4"}]})
    term_start: Time
    term_end: Time
    allowance_multiplier: Multiplier | None = Field(
        default=None, description="the plan's credits times this, as a decimal string (\"1.2\": 20% more)")
    allowance_credits: CreditsIn | None = Field(default=None, description="an absolute allocation per period")
    concurrency_multiplier: Multiplier = Field(default=Decimal(1), description="the plan's open-hold limit times this")
    seat_price_cents: int | None = Field(default=None, description="a seat's price per period, in cents")
    overage_allowed: bool = False
    overage_cap: CreditsIn | None = Field(default=None, description="overage credits allowed a period (none: no cap)")
    overage_rate_cents: Rate | None = Field(
        default=None, description="cents per overage credit, fractional cents allowed (\"0.4\")")
    payment_terms: Literal["card", "invoice"] = "card"
    net_days: int = 0

    def terms(self) -> ContractTerms:
        return ContractTerms(**self.model_dump())


class ContractOut(Answer):
    term_start: Time
    term_end: Time
    allowance_multiplier: Credits | None
    allowance_credits: Credits | None
    concurrency_multiplier: Credits
    seat_price_cents: int | None
    overage_allowed: bool
    overage_cap: Credits | None
    overage_rate_cents: Credits | None
    payment_terms: Literal["card", "invoice"]
    net_days: int


class ContractAnswer(Answer):
    org_id: str
    contract: ContractOut | None = Field(description="none: the plan's own terms apply")


class MigrateIn(Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 1}]})
    version: int | None = Field(default=None, description="a catalog version (none: the current one)")



class SubscriptionOut(Answer):
    org_id: str
    plan: str
    seats: int
    interval: Interval
    status: Status
    period_start: Time | None
    period_end: Time | None
    trial_end: Time | None
    pending_plan: str | None
    pending_seats: int | None
    cancel_at_period_end: bool
    renewals: int
    incident: str | None = Field(description="the failed step retried on a backoff, if any")
    catalog_version: int = Field(description="the catalog version its prices come from (kept until it changes plan "
                                             "or an operator migrates it)")
    contract: ContractOut | None = Field(description="its contract terms, if any (docs/contracts.md)")


# -- purchases -----------------------------------------------------------------------------------------------

class PurchaseIn(Request):
    model_config = _example(pack="500")
    pack: str | None = Field(default=None, description="a pack of the catalog, named by its credits: \"500\", "
                             "\"1000\", \"2500\", \"5000\" (or `credits`, not both)")
    credits: CreditsIn | None = Field(default=None, description="any amount of credits at the catalog's per-credit "
                                      "price (default catalog: 0.20 each, at least 100), as a decimal string (or "
                                      "`pack`, not both)")
    email: str | None = Field(default=None, description="the billing contact, for an organization that has none")
    payment_method: str | None = Field(default=None, description="a Stripe PaymentMethod id to attach first")


class PurchaseOut(Answer):
    org_id: str
    pack: str | None = Field(description="the pack bought; null: an amount of credits")
    credits: Credits
    amount_cents: int
    currency: Currency
    invoice_number: str
    payment_intent: str
    available: Credits


# -- settings -------------------------------------------------------------------------------------------------

class AutoRechargeIn(Request):
    model_config = _example(threshold="100", pack="500", spending_limit_cents=5000)
    threshold: CreditsIn
    pack: str | None = Field(default=None, description="the pack a recharge buys (or `credits`, not both)")
    credits: CreditsIn | None = Field(default=None, description="the amount of credits a recharge buys at the "
                                      "catalog's per-credit price (or `pack`, not both)")
    spending_limit_cents: int = Field(default=5000, description="at most this much per billing period, tax included")
    enabled: bool = True


class AutoRechargeOut(BaseModel):
    org_id: str
    configured: bool = Field(description="false: never set (every other field is then its default)")
    enabled: bool
    threshold: Credits | None
    pack: str | None
    credits: Credits | None = Field(default=None, description="the amount a recharge buys (null: a pack)")
    spending_limit_cents: int | None
    currency: Currency
    disabled_reason: str | None = Field(description="why the engine turned it off (\"payment_failed\")")


class UserLimitIn(Request):
    model_config = _example(limit="250")
    limit: CreditsIn


class UserLimitOut(BaseModel):
    org_id: str
    user_id: str
    limit: Credits | None = Field(description="credits the user may spend per period (null: no limit)")
    source: Literal["user", "default"] | None = Field(
        description="where the limit comes from: the user's own, or the organization's default (user id '*')")
    used: Credits = Field(description="credits the user spent this period while the organization had limits")
    remaining: Credits | None
    period_start: Time
    period_end: Time | None


class UsageGuardIn(Request):
    model_config = _example(max_uses=100, window_seconds=3600)
    max_uses: int = Field(ge=1, le=MAX_GUARD_USES, description="more uses than this within the window pause it")
    window_seconds: int = Field(default=3600, ge=1, le=int(MAX_GUARD_WINDOW.total_seconds()))


class UsageGuardOut(BaseModel):
    org_id: str
    action: str
    max_uses: int | None = Field(description="null: no guard")
    window_seconds: int | None


class ResumeOut(BaseModel):
    org_id: str
    action: str
    was_paused: bool


class LowBalanceAlertIn(Request):
    model_config = _example(threshold="50")
    threshold: CreditsIn | None = Field(description="email when the balance falls under this (null: off)")


class LowBalanceAlertOut(BaseModel):
    org_id: str
    threshold: Credits | None


class WalletIn(Request):
    model_config = _example(plan="free")
    plan: str = "free"


class WalletOut(Answer):
    org_id: str
    available: Credits
    replayed: bool


# -- API keys -------------------------------------------------------------------------------------------------

class ApiKeyIn(Request):
    model_config = _example(role="member", org_id="acme", user_id="u1", name="u1 laptop")
    role: Literal["platform", "admin", "member"]
    org_id: str | None = None
    user_id: str | None = None
    name: str = ""


class ApiKeyOut(Answer):
    id: str
    role: str
    org_id: str | None
    user_id: str | None
    prefix: str = Field(description="the secret's first characters, to recognise it")
    name: str
    created_at: Time
    revoked_at: Time | None
    created_by: str | None


class NewApiKeyOut(ApiKeyOut):
    key: str | None = Field(description="the secret, shown this once (null in an Idempotency-Key replay: it is "
                            "never stored)")


class ApiKeysOut(BaseModel):
    keys: list[ApiKeyOut]


class Whoami(BaseModel):
    key_id: str
    role: str
    org_id: str | None
    user_id: str | None
