-- Usage insight (DESIGN.md section 11, docs/usage.md): tags on usage, the log's index, quotas per plan and their
-- use per period, the runway alert. Invariants (tests/support/invariants.py):
--   Q1 quota_usage.used = sum(quantity) of the quota_events of its (org, quota, period_start)

-- Tags: a small map of dimension to value (models/tags.py validates it: how many, how long) on a debit or a hold,
-- copied to the committed hold's usage row. NULL: no tags (the fast path writes NULL, nothing more).
ALTER TABLE usage_events ADD COLUMN tags jsonb;
ALTER TABLE holds ADD COLUMN tags jsonb;

-- The per-event log, newest first, keyset-paginated on (created_at, idem_key) within an organization; the
-- grouped usage, series and exports over a range read it too (the BRIN index on created_at spans every
-- organization). One more btree insert per debit: bench/ledger.py measures the fast path with it. Transactions need
-- none: ledger_entries' primary key (org_id, id) is already an organization's entries in order.
CREATE INDEX usage_events_log ON usage_events (org_id, created_at, idem_key);

-- Quotas: non-credit limits per plan (the catalog's [plans.X.quotas]), counted per period of the wallet (the
-- plan's month, or the free plan's UTC day) by record_usage calls, each once per idempotency key.
CREATE TABLE quota_usage (
    org_id        text NOT NULL REFERENCES wallets (org_id),
    quota         text NOT NULL,
    period_start  timestamptz NOT NULL,
    used          numeric NOT NULL CHECK (used >= 0),
    PRIMARY KEY (org_id, quota, period_start)
);

CREATE TABLE quota_events (
    org_id        text NOT NULL REFERENCES wallets (org_id),
    idem_key      text NOT NULL,
    quota         text NOT NULL,
    quantity      numeric NOT NULL CHECK (quantity > 0),
    period_start  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);

-- The runway alert: opted in per organization; once a period, when the period's projected use runs past the
-- allocation before the 80% alert (models/projection.py has the rule; the alert poller applies it).
ALTER TABLE wallets ADD COLUMN runway_alert boolean NOT NULL DEFAULT false;
CREATE INDEX wallets_runway ON wallets (org_id) WHERE runway_alert;

-- New alert kinds. quota_80 / quota_100: period_key '{period start, epoch seconds}:{quota}', detail the quota.
-- runway: period_key the period start in epoch seconds, detail the projected use (milli-credits).
ALTER TABLE alerts DROP CONSTRAINT alerts_kind_check,
    ADD CONSTRAINT alerts_kind_check
        CHECK (kind IN ('plan_80', 'plan_100', 'low_balance', 'usage_guard_paused', 'quota_80', 'quota_100',
                        'runway'));

CREATE OR REPLACE FUNCTION events_from_alert() RETURNS trigger LANGUAGE plpgsql AS $$
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
    WHEN 'quota_80', 'quota_100' THEN
        v_type := CASE NEW.kind WHEN 'quota_80' THEN 'quota.usage_80' ELSE 'quota.usage_100' END;
        v_data := jsonb_build_object('alert_id', NEW.id, 'quota', NEW.detail,
                                     'percent', CASE NEW.kind WHEN 'quota_80' THEN 80 ELSE 100 END,
                                     'period_start',
                                     webhook_time(to_timestamp(split_part(NEW.period_key, ':', 1)::bigint)));
    WHEN 'runway' THEN
        v_type := 'credits.runway';
        v_data := jsonb_build_object('alert_id', NEW.id, 'projected', webhook_credits(NEW.detail::bigint),
                                     'allocation', (SELECT webhook_credits(allocation) FROM wallets
                                                    WHERE org_id = NEW.org_id),
                                     'period_start', webhook_time(to_timestamp(NEW.period_key::bigint)));
    ELSE
        RETURN NULL;
    END CASE;
    PERFORM webhook_event(NEW.org_id, v_type, 'alert:' || NEW.id, v_data, NEW.created_at);
    RETURN NULL;
END $$;
