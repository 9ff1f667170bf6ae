-- Count a successful use against the usage guard's window and the user's period limit.
CREATE OR REPLACE FUNCTION ledger_count_use(w wallets, p_action text, p_user text, p_cost bigint, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF w.has_guards THEN
        UPDATE usage_guards SET
            uses = CASE WHEN window_start + make_interval(secs => window_seconds) > p_now THEN uses + 1 ELSE 1 END,
            window_start = CASE WHEN window_start + make_interval(secs => window_seconds) > p_now
                                THEN window_start ELSE p_now END
        WHERE org_id = w.org_id AND action = p_action;
    END IF;
    IF w.has_user_limits AND p_user IS NOT NULL THEN
        INSERT INTO user_usage (org_id, user_id, period_start, consumed)
            VALUES (w.org_id, p_user, w.period_start, p_cost)
            ON CONFLICT (org_id, user_id, period_start)
            DO UPDATE SET consumed = user_usage.consumed + EXCLUDED.consumed;
    END IF;
END $$;
