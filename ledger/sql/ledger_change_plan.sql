-- Upgrade mid-period: the new plan's terms apply now; the plan bucket is replaced by one holding the new
-- allocation minus the plan credits consumed this period (never below 0), expiring at the same period
-- end. Packs are untouched. Idempotent by p_key. 'no_period' for a wallet on the free (daily) plan.
CREATE OR REPLACE FUNCTION ledger_change_plan(p_org text, p_key text, p_plan text, p_tiers text[], p_max_holds integer,
                                              p_allocation bigint, p_now timestamptz,
                                              OUT status text, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    v_request text := concat_ws('|', 'change', p_plan, array_to_string(p_tiers, ','), p_max_holds, p_allocation);
    v_left bigint;
    v_bucket bigint;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    status := ledger_op_repeat(p_org, p_key, v_request);
    IF status IS NOT NULL THEN
        replayed := true;
        available := ledger_available(w);
        RETURN;
    END IF;
    w := ledger_refresh(w, p_now);
    IF w.daily_grant > 0 OR w.period_end IS NULL THEN
        PERFORM ledger_save(w, p_now);  -- keep what ledger_refresh caught up with (expired holds, today's grant)
        status := 'no_period'; RETURN;
    END IF;
    INSERT INTO wallet_ops (org_id, op_key, request, created_at) VALUES (p_org, p_key, v_request, p_now);
    w := ledger_close_plan(w, p_key, p_now);
    w.plan := p_plan; w.tiers := p_tiers; w.max_holds := p_max_holds; w.allocation := p_allocation;
    v_left := greatest(p_allocation - w.consumed, 0);
    -- A period that has just ended (its renewal not yet run) takes the new terms only: the renewal
    -- grants the new plan's allocation.
    IF v_left > 0 AND w.period_end > p_now THEN
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (p_org, p_key, 'plan', v_left, v_left, w.period_end, p_now) RETURNING id INTO v_bucket;
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, v_bucket, 'grant', v_left, p_key, p_now);
        w.plan_remaining := v_left;
        w.plan_expires_at := w.period_end;
        w.plan_bucket_id := v_bucket;
    END IF;
    w := ledger_rearm_low_balance(w);
    PERFORM ledger_save(w, p_now);
    status := 'ok';
    available := ledger_available(w);
END $$;
