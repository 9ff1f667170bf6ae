"""Billing records: customers, payments, invoices, email outbox (see 0002_billing.sql; the ledger's
mid-period plan change and the outbox's sent-once trigger are in ledger/sql/).

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

from ledger.migrate import drop_repeatables
from migrations.sql_script import run_sql_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    run_sql_script(_SQL)


def downgrade() -> None:
    for statement in drop_repeatables():
        op.execute(statement)
    op.execute("DROP TABLE IF EXISTS outbox, invoices, invoice_counters, payments, billing_profiles CASCADE")
