"""Usage insight: tags on usage, the log's index, quotas and their use per period, the runway alert (see
0012_usage_insight.sql).

Revision ID: 0012
Revises: 0011
"""

from migrations.sql_script import sql_revision

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# events_from_alert as 0007 made it (the downgrade puts it back).
_EVENTS_FROM_ALERT_0007 = """CREATE OR REPLACE FUNCTION events_from_alert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
    v_data jsonb;
BEGIN
    CASE NEW.kind
    WHEN 'plan_80', 'plan_100' THEN
        v_type := CASE NEW.kind WHEN 'plan_80' THEN 'credits.usage_80' ELSE 'credits.usage_100' END;
        v_data := jsonb_build_object('alert_id', NEW.id, 'percent', CASE NEW.kind WHEN 'plan_80' THEN 80 ELSE 100 END,
                                     'period_start', webhook_time(to_timestamp(NEW.period_key::bigint)));
    WHEN 'low_balance' THEN
        v_type := 'credits.low_balance';
        v_data := jsonb_build_object('alert_id', NEW.id, 'available', webhook_credits(NEW.detail::bigint),
                                     'threshold', (SELECT webhook_credits(low_balance_threshold) FROM wallets
                                                   WHERE org_id = NEW.org_id));
    WHEN 'usage_guard_paused' THEN
        v_type := 'usage_guard.paused';
        v_data := jsonb_build_object('alert_id', NEW.id, 'action', NEW.detail);
    ELSE
        RETURN NULL;
    END CASE;
    PERFORM webhook_event(NEW.org_id, v_type, 'alert:' || NEW.id, v_data, NEW.created_at);
    RETURN NULL;
END $$"""

upgrade, downgrade = sql_revision(
    __file__,
    _EVENTS_FROM_ALERT_0007,
    "DELETE FROM alerts WHERE kind IN ('quota_80', 'quota_100', 'runway')",
    "ALTER TABLE alerts DROP CONSTRAINT alerts_kind_check, ADD CONSTRAINT alerts_kind_check "
    "CHECK (kind IN ('plan_80', 'plan_100', 'low_balance', 'usage_guard_paused'))",
    "DROP INDEX IF EXISTS wallets_runway",
    "ALTER TABLE wallets DROP COLUMN IF EXISTS runway_alert",
    "DROP TABLE IF EXISTS quota_events",
    "DROP TABLE IF EXISTS quota_usage",
    "DROP INDEX IF EXISTS usage_events_log",
    "ALTER TABLE holds DROP COLUMN IF EXISTS tags",
    "ALTER TABLE usage_events DROP COLUMN IF EXISTS tags",
)
