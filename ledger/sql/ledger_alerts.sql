-- Record the 80% / 100% plan-consumption crossings (once per period) and the low-balance crossing
-- (once until the balance rises above the threshold again).
CREATE OR REPLACE FUNCTION ledger_alerts(w wallets, p_consumed_before bigint, p_ref text, p_now timestamptz)
RETURNS wallets LANGUAGE plpgsql AS $$
DECLARE
    v_period text := extract(epoch FROM w.period_start)::bigint::text;
BEGIN
    IF ledger_crossed(p_consumed_before, w.consumed, w.allocation, 80) THEN
        INSERT INTO alerts (org_id, kind, period_key, created_at) VALUES (w.org_id, 'plan_80', v_period, p_now)
            ON CONFLICT DO NOTHING;
    END IF;
    IF ledger_crossed(p_consumed_before, w.consumed, w.allocation, 100) THEN
        INSERT INTO alerts (org_id, kind, period_key, created_at) VALUES (w.org_id, 'plan_100', v_period, p_now)
            ON CONFLICT DO NOTHING;
    END IF;
    IF w.low_balance_armed AND w.low_balance_threshold IS NOT NULL
       AND ledger_available(w) < w.low_balance_threshold THEN
        INSERT INTO alerts (org_id, kind, period_key, detail, created_at)
            VALUES (w.org_id, 'low_balance', p_ref, ledger_available(w)::text, p_now)
            ON CONFLICT DO NOTHING;
        w.low_balance_armed := false;
    END IF;
    RETURN w;
END $$;
