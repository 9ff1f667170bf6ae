"""The credit ledger: wallets, buckets, entries, usage, holds, limits, guards, alerts, and the
PL/pgSQL functions that make every ledger operation one statement (see 0001_ledger.sql).

Revision ID: 0001
Revises:
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    # The raw driver cursor: the script holds PL/pgSQL bodies with '%' and '::' that must reach
    # the server untouched (no parameter parsing).
    driver = op.get_bind().connection.dbapi_connection
    assert driver is not None
    with driver.cursor() as cur:
        cur.execute(_SQL.read_text())


def downgrade() -> None:
    op.execute(
        "DROP TABLE IF EXISTS wallet_ops, alerts, usage_guards, user_usage, user_limits, holds, "
        "usage_events, ledger_entries, buckets, wallets CASCADE"
    )
    op.execute("DROP TYPE IF EXISTS ledger_step CASCADE")
