"""Auto-recharge: its settings, the wallet's threshold and lease, and the debit functions that decide the
threshold crossing in their own statement (see 0003_auto_recharge.sql).

Revision ID: 0003
Revises: 0002
"""

from pathlib import Path

from alembic import op

from migrations.sql_script import run_sql_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    run_sql_script(_SQL)


def downgrade() -> None:
    # The debit functions keep the `recharge` result column; 0001's versions would need re-creating.
    op.execute("DROP TABLE IF EXISTS auto_recharge")
    op.execute("DROP INDEX IF EXISTS payments_auto_recharge")
    op.execute("DROP FUNCTION IF EXISTS ledger_recharge_due, ledger_recharge_lease CASCADE")
