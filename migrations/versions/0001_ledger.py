"""The credit ledger: wallets, buckets, entries, usage, holds, limits, guards, alerts (see 0001_ledger.sql;
the PL/pgSQL functions that make every ledger operation one statement are in ledger/sql/).

Revision ID: 0001
Revises:
"""

from migrations.sql_script import sql_revision

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TABLE IF EXISTS wallet_ops, alerts, usage_guards, user_usage, user_limits, holds, "
    "usage_events, ledger_entries, buckets, wallets CASCADE",
    "DROP TYPE IF EXISTS ledger_step CASCADE",
)
