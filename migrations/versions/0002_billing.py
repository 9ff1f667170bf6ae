"""Billing records (customers, payments, invoices, email outbox) and the ledger's mid-period plan change
(see 0002_billing.sql).

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    driver = op.get_bind().connection.dbapi_connection  # raw cursor: PL/pgSQL bodies reach the server as-is
    assert driver is not None
    with driver.cursor() as cur:
        cur.execute(_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ledger_change_plan CASCADE")
    op.execute("DROP TABLE IF EXISTS outbox, invoices, invoice_counters, payments, billing_profiles CASCADE")
    op.execute("DROP FUNCTION IF EXISTS outbox_sent_once CASCADE")
