-- Catch the wallet up with time: release holds past their TTL (and what they reserved in overage), expire a plan bucket past its end, and
-- grant the free plan's credits for the current UTC day (lazily: no timer per free organization).
CREATE OR REPLACE FUNCTION ledger_refresh(w wallets, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_day timestamptz;
    v_bucket bigint;
BEGIN
    IF w.open_holds > 0 THEN
        FOR r IN UPDATE holds SET status = 'expired', settled_at = p_now
                 WHERE org_id = w.org_id AND status = 'open' AND expires_at <= p_now
                 RETURNING idem_key, cost, overage LOOP
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, NULL, 'release', r.cost, 'hold:' || r.idem_key, p_now);
            w.held := w.held - (r.cost - r.overage);
            w.overage_held := w.overage_held - r.overage;
            w.open_holds := w.open_holds - 1;
        END LOOP;
    END IF;
    IF w.plan_expires_at <= p_now THEN
        w := ledger_close_plan(w, 'expiry', p_now);
    END IF;
    IF w.daily_grant > 0 AND w.plan_expires_at IS NULL THEN
        v_day := date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (w.org_id, 'daily:' || to_char(v_day AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 'plan',
                    w.daily_grant, w.daily_grant, v_day + interval '1 day', p_now)
            ON CONFLICT (org_id, grant_key) DO NOTHING
            RETURNING id INTO v_bucket;
        IF v_bucket IS NOT NULL THEN
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, v_bucket, 'grant', w.daily_grant,
                        'daily:' || to_char(v_day AT TIME ZONE 'UTC', 'YYYY-MM-DD'), p_now);
            w.plan_remaining := w.daily_grant;
            w.plan_bucket_id := v_bucket;
        END IF;
        w.plan_expires_at := v_day + interval '1 day';
        w.period_start := v_day;
        w.period_end := v_day + interval '1 day';
        w.allocation := w.daily_grant;
        -- Today's bucket existed already (closed by a plan change today): today's credits were given.
        w.consumed := CASE WHEN v_bucket IS NULL THEN w.daily_grant ELSE 0 END;
    END IF;
    RETURN w;
END $$;
