"""Billing records: customers, payments, invoices, email outbox (see 0002_billing.sql; the ledger's
mid-period plan change and the outbox's sent-once trigger are in ledger/sql/).

Revision ID: 0002
Revises: 0001
"""

from migrations.sql_script import sql_revision

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TABLE IF EXISTS outbox, invoices, invoice_counters, payments, billing_profiles CASCADE",
)
