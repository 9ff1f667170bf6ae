"""The credit ledger: wallets, buckets, entries, usage, holds, limits, guards, alerts (see 0001_ledger.sql;
the PL/pgSQL functions that make every ledger operation one statement are in ledger/sql/).

Revision ID: 0001
Revises:
"""

from pathlib import Path

from alembic import op

from ledger.migrate import drop_repeatables
from migrations.sql_script import run_sql_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    run_sql_script(_SQL)


def downgrade() -> None:
    for statement in drop_repeatables():
        op.execute(statement)
    op.execute(
        "DROP TABLE IF EXISTS wallet_ops, alerts, usage_guards, user_usage, user_limits, holds, "
        "usage_events, ledger_entries, buckets, wallets CASCADE"
    )
    op.execute("DROP TYPE IF EXISTS ledger_step CASCADE")
