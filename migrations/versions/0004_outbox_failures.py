"""Emails refused for good are recorded as failed on their outbox row (see 0004_outbox_failures.sql).

Revision ID: 0004
Revises: 0003
"""

from migrations.sql_script import sql_revision

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP INDEX IF EXISTS outbox_failed",
    "ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_sent_or_failed, "
    "DROP CONSTRAINT IF EXISTS outbox_failed_has_error, DROP COLUMN IF EXISTS failed_at, DROP COLUMN IF EXISTS error",
)
