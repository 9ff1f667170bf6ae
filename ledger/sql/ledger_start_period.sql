-- Open the wallet if needed and start an allocation period: expire what is left of the plan bucket
-- and grant the new allocation (or, on a daily plan, arm the lazy daily grant). Idempotent by p_key.
CREATE OR REPLACE FUNCTION ledger_start_period(p_org text, p_key text, p_plan text, p_tiers text[], p_max_holds integer,
                                               p_daily_grant bigint, p_allocation bigint, p_period_start timestamptz,
                                               p_period_end timestamptz, p_now timestamptz,
                                               OUT status text, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    v_request text := concat_ws('|', p_plan, array_to_string(p_tiers, ','), p_max_holds, p_daily_grant,
                                p_allocation, p_period_start, p_period_end);
    v_bucket bigint;
BEGIN
    replayed := false;
    -- A new wallet starts empty (daily_grant 0); the plan's terms are applied below, once.
    INSERT INTO wallets (org_id, plan, tiers, max_holds, period_start, created_at, updated_at)
        VALUES (p_org, p_plan, p_tiers, p_max_holds, p_period_start, p_now, p_now)
        ON CONFLICT (org_id) DO NOTHING;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    status := ledger_op_repeat(p_org, p_key, v_request);
    IF status IS NOT NULL THEN
        replayed := true;
        available := ledger_available(w);
        RETURN;
    END IF;
    INSERT INTO wallet_ops (org_id, op_key, request, created_at) VALUES (p_org, p_key, v_request, p_now);
    w := ledger_refresh(w, p_now);
    w := ledger_close_plan(w, p_key, p_now);
    w.plan := p_plan; w.tiers := p_tiers; w.max_holds := p_max_holds; w.daily_grant := p_daily_grant;
    w.period_start := p_period_start; w.period_end := p_period_end;
    w.allocation := p_allocation; w.consumed := 0;
    IF p_daily_grant = 0 AND p_allocation > 0 THEN
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (p_org, p_key, 'plan', p_allocation, p_allocation, p_period_end, p_now)
            RETURNING id INTO v_bucket;
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, v_bucket, 'grant', p_allocation, p_key, p_now);
        w.plan_remaining := p_allocation;
        w.plan_expires_at := p_period_end;
        w.plan_bucket_id := v_bucket;
    END IF;
    w := ledger_refresh(w, p_now);  -- a daily plan gets today's credits now
    w := ledger_rearm_low_balance(w);
    PERFORM ledger_save(w, p_now);
    status := 'ok';
    available := ledger_available(w);
END $$;
