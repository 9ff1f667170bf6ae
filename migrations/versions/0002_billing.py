"""Billing records (customers, payments, invoices, email outbox) and the ledger's mid-period plan change
(see 0002_billing.sql).

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

from migrations.sql_script import run_sql_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    run_sql_script(_SQL)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ledger_change_plan CASCADE")
    op.execute("DROP TABLE IF EXISTS outbox, invoices, invoice_counters, payments, billing_profiles CASCADE")
    op.execute("DROP FUNCTION IF EXISTS outbox_sent_once CASCADE")
