"""Auto-recharge: its settings, the wallet's threshold and lease, and the `recharge` result of the debit
and the hold (see 0003_auto_recharge.sql; the functions that decide the threshold crossing in their own
statement are in ledger/sql/).

Revision ID: 0003
Revises: 0002
"""

from pathlib import Path

from alembic import op

from ledger.migrate import drop_repeatables
from migrations.sql_script import run_sql_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    run_sql_script(_SQL)


def downgrade() -> None:
    for statement in drop_repeatables():
        op.execute(statement)
    op.execute("DROP TABLE IF EXISTS auto_recharge")
    op.execute("DROP INDEX IF EXISTS payments_auto_recharge")
    op.execute("ALTER TYPE ledger_step DROP ATTRIBUTE IF EXISTS recharge")
    op.execute("ALTER TABLE wallets DROP COLUMN IF EXISTS recharge_threshold, DROP COLUMN IF EXISTS recharge_resume_at")
