"""Any-amount credits: auto-recharge may buy an amount of credits as well as a pack (see
0008_any_amount_credits.sql).

Revision ID: 0008
Revises: 0007
"""

from migrations.sql_script import sql_revision

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The downgrade puts back 0007's event function (settings holding an amount stay: older code treats them as an
# unknown pack, i.e. auto-recharge off).
_EVENT_0007 = """
CREATE OR REPLACE FUNCTION events_from_auto_recharge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'auto_recharge.disabled', NEW.org_id || ':' || NEW.version,
        jsonb_build_object('reason', NEW.disabled_reason, 'pack', NEW.pack,
                           'threshold', webhook_credits(NEW.threshold),
                           'spending_limit_cents', NEW.spending_limit_cents),
        NEW.updated_at);
    RETURN NULL;
END $$"""

upgrade, downgrade = sql_revision(
    __file__,
    "ALTER TABLE auto_recharge DROP CONSTRAINT IF EXISTS auto_recharge_buys",
    _EVENT_0007,
)
