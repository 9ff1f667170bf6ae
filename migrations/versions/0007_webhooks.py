"""Outgoing webhooks: events written in the transaction of their cause, endpoints and their delivery cursors
(see 0007_webhooks.sql).

Revision ID: 0007
Revises: 0006
"""

from migrations.sql_script import sql_revision

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TRIGGER IF EXISTS alerts_event ON alerts",
    "DROP TRIGGER IF EXISTS payments_event ON payments",
    "DROP TRIGGER IF EXISTS invoices_event ON invoices",
    "DROP TRIGGER IF EXISTS auto_recharge_event ON auto_recharge",
    "DROP TABLE IF EXISTS webhook_endpoints, events",
    "DROP FUNCTION IF EXISTS events_from_alert(), events_from_payment(), events_from_invoice(), "
    "events_from_auto_recharge(), webhook_event(text, text, text, jsonb, timestamptz), "
    "webhook_event_id(text, text), webhook_credits(bigint), webhook_time(timestamptz), "
    "webhook_endpoints_cursor_forward()",
)
