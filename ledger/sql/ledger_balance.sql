-- O(1) balance read: stored class balances; expiry and today's free grant are computed, not written.
-- Open holds are at most the plan's concurrency limit, so summing the live ones stays bounded; the one
-- scan of them gives both the credits they hold and how many are open (a hold past its TTL counts as
-- released, as ledger_refresh will record it). concurrency_limit: the maximum of open holds (ledger_max_holds).
-- held is what the open holds reserve of the balance, overage_held what they reserve in overage; overage is the
-- recorded overage not yet closed, with the terms that bound it (overage_allowed, overage_cap).
-- The drop names the signature before the concurrency and overage OUT columns (CREATE OR REPLACE cannot add
-- them); callers name the columns they read, so columns added at the end change none of them.
DROP FUNCTION IF EXISTS ledger_balance(text, timestamptz);
CREATE OR REPLACE FUNCTION ledger_balance(p_org text, p_now timestamptz,
                                          OUT plan text, OUT plan_credits bigint, OUT topup bigint, OUT held bigint,
                                          OUT allocation bigint, OUT consumed bigint, OUT period_start timestamptz,
                                          OUT period_end timestamptz, OUT concurrency_limit integer,
                                          OUT concurrency_open integer, OUT overage bigint, OUT overage_held bigint,
                                          OUT overage_allowed boolean, OUT overage_cap bigint)
LANGUAGE sql STABLE AS $$
    SELECT w.plan,
           CASE WHEN w.plan_expires_at > p_now THEN w.plan_remaining
                WHEN w.daily_grant > 0 THEN w.daily_grant ELSE 0 END,
           w.topup_remaining,
           o.held,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now)
                THEN w.daily_grant ELSE w.allocation END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now)
                THEN 0 ELSE w.consumed END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now)
                THEN date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' ELSE w.period_start END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now)
                THEN (date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + interval '1 day'
                ELSE w.period_end END,
           ledger_max_holds(w),
           o.n,
           w.overage,
           o.overage_held,
           w.overage_allowed,
           w.overage_cap
    FROM wallets w
    -- No open hold recorded (the common case): a one-time filter, the holds are not read at all.
    CROSS JOIN LATERAL (SELECT coalesce(sum(h.cost - h.overage), 0)::bigint AS held, count(*)::integer AS n,
                               coalesce(sum(h.overage), 0)::bigint AS overage_held FROM holds h
                        WHERE w.open_holds > 0 AND h.org_id = w.org_id AND h.status = 'open'
                          AND h.expires_at > p_now) o
    WHERE w.org_id = p_org
$$;
