"""Auto-recharge: its settings, the wallet's threshold and lease, and the `recharge` result of the debit
and the hold (see 0003_auto_recharge.sql; the functions that decide the threshold crossing in their own
statement are in ledger/sql/).

Revision ID: 0003
Revises: 0002
"""

from migrations.sql_script import sql_revision

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TABLE IF EXISTS auto_recharge",
    "DROP INDEX IF EXISTS payments_auto_recharge",
    "ALTER TYPE ledger_step DROP ATTRIBUTE IF EXISTS recharge",
    "ALTER TABLE wallets DROP COLUMN IF EXISTS recharge_threshold, DROP COLUMN IF EXISTS recharge_resume_at",
)
