-- The rules a debit or a hold must pass under the wallet lock, in order: the plan's model tiers, (for a
-- hold) the concurrency limit (ledger_max_holds), the usage guard, the per-user limit, the available balance
-- and, past it, the overage the terms leave (ledger_overage_room). Returns NULL when allowed, else (status,
-- detail_a, detail_b).
CREATE OR REPLACE FUNCTION ledger_check(w wallets, p_action text, p_tier text, p_user text, p_cost bigint,
                                        p_is_hold boolean, p_ref text, p_now timestamptz,
                                        OUT status text, OUT detail_a bigint, OUT detail_b bigint)
LANGUAGE plpgsql AS $$
DECLARE
    g usage_guards%ROWTYPE;
    v_uses integer;
    v_limit bigint;
    v_used bigint;
BEGIN
    IF p_tier IS NOT NULL AND NOT (p_tier = ANY (w.tiers)) THEN
        status := 'tier'; RETURN;
    END IF;
    IF p_is_hold AND w.open_holds >= ledger_max_holds(w) THEN
        status := 'concurrency'; detail_a := ledger_max_holds(w); RETURN;
    END IF;
    IF w.has_guards THEN
        SELECT * INTO g FROM usage_guards WHERE org_id = w.org_id AND action = p_action;
        IF FOUND THEN
            IF g.paused_at IS NOT NULL THEN
                status := 'guard_paused'; RETURN;
            END IF;
            v_uses := CASE WHEN g.window_start + make_interval(secs => g.window_seconds) > p_now
                           THEN g.uses ELSE 0 END;
            IF v_uses >= g.max_uses THEN
                -- This use would be one too many: pause the action (kept: the refusal is the point).
                UPDATE usage_guards SET paused_at = p_now WHERE org_id = w.org_id AND action = p_action;
                INSERT INTO alerts (org_id, kind, period_key, detail, created_at)
                    VALUES (w.org_id, 'usage_guard_paused', p_action || ':' || p_ref, p_action, p_now)
                    ON CONFLICT DO NOTHING;
                status := 'guard_paused'; detail_a := g.max_uses; RETURN;
            END IF;
        END IF;
    END IF;
    IF w.has_user_limits AND p_user IS NOT NULL THEN
        SELECT limit_milli INTO v_limit FROM user_limits
            WHERE org_id = w.org_id AND user_id IN (p_user, '*') ORDER BY user_id = '*' LIMIT 1;
        IF FOUND THEN
            SELECT coalesce(max(consumed), 0) INTO v_used FROM user_usage
                WHERE org_id = w.org_id AND user_id = p_user AND period_start = w.period_start;
            IF v_used + p_cost > v_limit THEN
                status := 'user_limit'; detail_a := v_limit; detail_b := v_used; RETURN;
            END IF;
        END IF;
    END IF;
    -- Past the balance, overage up to the cap: the balance's part is what it covers (never a negative balance,
    -- left by buckets expired under open holds), the rest is overage.
    IF p_cost > ledger_available(w)
       AND (NOT w.overage_allowed OR p_cost > greatest(ledger_available(w), 0) + ledger_overage_room(w)) THEN
        status := 'insufficient';
    END IF;
END $$;
