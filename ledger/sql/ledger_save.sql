-- plpgsql (not sql) so the UPDATE's plan is cached per session instead of planned on every call.
CREATE OR REPLACE FUNCTION ledger_save(w wallets, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE wallets SET plan = w.plan, tiers = w.tiers, max_holds = w.max_holds, daily_grant = w.daily_grant,
        period_start = w.period_start, period_end = w.period_end, allocation = w.allocation,
        consumed = w.consumed, plan_remaining = w.plan_remaining, plan_expires_at = w.plan_expires_at,
        plan_bucket_id = w.plan_bucket_id,
        topup_remaining = w.topup_remaining, held = w.held, open_holds = w.open_holds,
        low_balance_threshold = w.low_balance_threshold, low_balance_armed = w.low_balance_armed,
        recharge_threshold = w.recharge_threshold, recharge_resume_at = w.recharge_resume_at,
        overage = w.overage, overage_held = w.overage_held,
        updated_at = p_now
    WHERE org_id = w.org_id
      -- Only a change is a write: a refusal or a replay that saves the row as it was leaves it (and its
      -- updated_at) untouched (failure model rules 1 and 8).
      AND (plan, tiers, max_holds, daily_grant, period_start, period_end, allocation, consumed, plan_remaining,
           plan_expires_at, plan_bucket_id, topup_remaining, held, open_holds, low_balance_threshold,
           low_balance_armed, recharge_threshold, recharge_resume_at, overage, overage_held)
          IS DISTINCT FROM
          (w.plan, w.tiers, w.max_holds, w.daily_grant, w.period_start, w.period_end, w.allocation, w.consumed,
           w.plan_remaining, w.plan_expires_at, w.plan_bucket_id, w.topup_remaining, w.held, w.open_holds,
           w.low_balance_threshold, w.low_balance_armed, w.recharge_threshold, w.recharge_resume_at, w.overage,
           w.overage_held);
END $$;
