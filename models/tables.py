"""The ledger's and billing's tables as SQLAlchemy 2 metadata: the typed map of the schema.

The migrations own the DDL (migrations/versions/*.sql); tests/ledger/test_schema.py compares this metadata
with the migrated database, so this file cannot drift from what is really there.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()
TS = DateTime(timezone=True)

wallets = Table(
    "wallets", metadata,
    Column("org_id", Text, primary_key=True),
    Column("plan", Text, nullable=False),
    Column("tiers", ARRAY(Text), nullable=False),
    Column("max_holds", Integer, nullable=False),
    Column("daily_grant", BigInteger, nullable=False),
    Column("period_start", TS, nullable=False),
    Column("period_end", TS),
    Column("allocation", BigInteger, nullable=False),
    Column("consumed", BigInteger, nullable=False),
    Column("plan_remaining", BigInteger, nullable=False),
    Column("plan_expires_at", TS),
    Column("plan_bucket_id", BigInteger),
    Column("topup_remaining", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("open_holds", Integer, nullable=False),
    Column("low_balance_threshold", BigInteger),
    Column("low_balance_armed", Boolean, nullable=False),
    Column("has_user_limits", Boolean, nullable=False),
    Column("has_guards", Boolean, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("recharge_threshold", BigInteger),   # auto-recharge's threshold while enabled (0003)
    Column("recharge_resume_at", TS),           # auto-recharge's lease: no new trigger before it
    Column("overage_allowed", Boolean, nullable=False),  # wallet terms (0009): debits past the balance allowed
    Column("overage_cap", BigInteger),                   # the most overage not yet closed; NULL: no cap
    Column("concurrency_limit", Integer),                # open holds at most; NULL: the plan's max_holds
    Column("overage", BigInteger, nullable=False),       # recorded overage not yet closed (invoiced)
    Column("overage_held", BigInteger, nullable=False),  # reserved in overage by open holds
    Column("runway_alert", Boolean, nullable=False),     # opted in to the runway alert (0012)
)

buckets = Table(
    "buckets", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("org_id", Text, ForeignKey("wallets.org_id"), nullable=False),
    Column("grant_key", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("granted", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("expires_at", TS),
    Column("created_at", TS, nullable=False),
    UniqueConstraint("org_id", "grant_key"),
)

ledger_entries = Table(
    "ledger_entries", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("org_id", Text, primary_key=True),
    Column("bucket_id", BigInteger),
    Column("kind", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("ref", Text, nullable=False),
    Column("created_at", TS, nullable=False),
)

usage_events = Table(
    "usage_events", metadata,
    Column("org_id", Text, primary_key=True),
    Column("idem_key", Text, primary_key=True),
    Column("source", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("tier", Text),
    Column("quantity", Numeric, nullable=False),
    Column("country", Text),
    Column("user_id", Text),
    Column("cost", BigInteger, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("tags", JSONB),  # models/tags.py; NULL: none
)

holds = Table(
    "holds", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("idem_key", Text, primary_key=True),
    Column("action", Text, nullable=False),
    Column("tier", Text),
    Column("quantity", Numeric, nullable=False),
    Column("country", Text),
    Column("user_id", Text),
    Column("cost", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("settled_at", TS),
    Column("overage", BigInteger, nullable=False),  # of cost: reserved (open) or recorded (committed) as overage
    Column("tags", JSONB),  # copied to the usage row when committed
)

overage_closes = Table(
    "overage_closes", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("close_key", Text, primary_key=True),
    Column("credits", BigInteger, nullable=False),
    Column("created_at", TS, nullable=False),
)

user_limits = Table(
    "user_limits", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("limit_milli", BigInteger, nullable=False),
)

user_usage = Table(
    "user_usage", metadata,
    Column("org_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("period_start", TS, primary_key=True),
    Column("consumed", BigInteger, nullable=False),
)

usage_guards = Table(
    "usage_guards", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("action", Text, primary_key=True),
    Column("max_uses", Integer, nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("window_start", TS),
    Column("uses", Integer, nullable=False),
    Column("paused_at", TS),
)

# Quotas (0012): non-credit limits per plan, counted per period; each record once per key.
quota_usage = Table(
    "quota_usage", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("quota", Text, primary_key=True),
    Column("period_start", TS, primary_key=True),
    Column("used", Numeric, nullable=False),
)

quota_events = Table(
    "quota_events", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("idem_key", Text, primary_key=True),
    Column("quota", Text, nullable=False),
    Column("quantity", Numeric, nullable=False),
    Column("period_start", TS, nullable=False),
    Column("created_at", TS, nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("org_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("period_key", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("sent_at", TS),
    UniqueConstraint("org_id", "kind", "period_key"),
)

wallet_ops = Table(
    "wallet_ops", metadata,
    Column("org_id", Text, primary_key=True),
    Column("op_key", Text, primary_key=True),
    Column("request", Text, nullable=False),
    Column("created_at", TS, nullable=False),
)


# -- billing (0002_billing.sql) ---------------------------------------------------------------------

billing_profiles = Table(
    "billing_profiles", metadata,
    Column("org_id", Text, primary_key=True),
    Column("email", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("vat_rate", Numeric, nullable=False),
    Column("stripe_customer_id", Text),
    Column("payment_method_id", Text),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)

payments = Table(
    "payments", metadata,
    Column("key", Text, primary_key=True),
    Column("org_id", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("stripe_payment_intent", Text, unique=True),
    Column("decline_code", Text),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("paid_by", Text),                    # invoice terms (0011): 'transfer' when an operator recorded it
)

invoice_counters = Table(
    "invoice_counters", metadata,
    Column("year", Integer, primary_key=True, autoincrement=False),
    Column("last", Integer, nullable=False),
)

invoices = Table(
    "invoices", metadata,
    Column("number", Text, primary_key=True),
    Column("year", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("org_id", Text, nullable=False),
    Column("payment_key", Text, ForeignKey("payments.key"), nullable=False, unique=True),
    Column("purpose", Text, nullable=False),
    Column("issued_at", TS, nullable=False),
    Column("currency", Text, nullable=False),
    Column("lines", JSONB, nullable=False),
    Column("subtotal_cents", BigInteger, nullable=False),
    Column("tax_rate", Numeric, nullable=False),
    Column("tax_cents", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=False),
    Column("stripe_payment_id", Text),          # NULL: open, or paid by transfer (0011)
    Column("html", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="paid"),  # open: issued on invoice terms (0011)
    Column("due_at", TS),
    Column("due_noticed_at", TS),
    Column("overdue_at", TS),
    Column("paid_at", TS),
    Column("paid_reference", Text),
    UniqueConstraint("year", "seq"),
)

outbox = Table(
    "outbox", metadata,
    Column("key", Text, primary_key=True),
    Column("org_id", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("to_addr", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("text_body", Text, nullable=False),
    Column("html_body", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("sent_at", TS),
    Column("failed_at", TS),   # refused for good by the SMTP server (0004): recorded, never retried
    Column("error", Text),
)

auto_recharge = Table(
    "auto_recharge", metadata,
    Column("org_id", Text, ForeignKey("wallets.org_id"), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("threshold", BigInteger, nullable=False),
    Column("pack", Text, nullable=False),
    Column("spending_limit_cents", BigInteger, nullable=False),
    Column("disabled_reason", Text),
    Column("version", BigInteger, nullable=False),
    Column("updated_at", TS, nullable=False),
)

stripe_ceiling = Table(
    "stripe_ceiling", metadata,  # 0005: one row per ceiling, the current second's count (payments/ceiling.py)
    Column("key", Text, primary_key=True),
    Column("window_start", BigInteger, nullable=False),
    Column("used", Integer, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,  # 0006: keys stored as the SHA-256 of their secret (api/keys.py)
    Column("id", Text, primary_key=True),
    Column("secret_sha", LargeBinary, nullable=False, unique=True),
    Column("prefix", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("org_id", Text),
    Column("user_id", Text),
    Column("name", Text, nullable=False),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

http_idempotency = Table(
    "http_idempotency", metadata,  # 0006: the first answer of a POST per (scope, Idempotency-Key)
    Column("scope", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("status", Integer),
    Column("body", LargeBinary),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events", metadata,  # 0007: webhook events, written in the transaction of their cause; seq is the cursor
    Column("seq", BigInteger, primary_key=True),
    Column("id", Text, nullable=False, unique=True),
    Column("org_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

webhook_endpoints = Table(
    "webhook_endpoints", metadata,  # 0007: where events go, and each endpoint's delivery cursor
    Column("id", Text, primary_key=True),
    Column("org_id", Text),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("description", Text, nullable=False),
    Column("owner_email", Text),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Column("delivered_seq", BigInteger, nullable=False),
    Column("failing_since", DateTime(timezone=True)),
    Column("failed_attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
)
