-- The trigger rule, in one place: a debit or a hold that leaves `p_available` under the threshold while
-- no recharge is under way (no lease, or its lease ran out: a lost signal is asked again).
-- Inlined by the planner wherever it is called, with the wallet variable or the UPDATE's whole row
-- (ledger_debit's fast path, checked with EXPLAIN (VERBOSE, GENERIC_PLAN)); 1e6 plpgsql evaluations:
-- 31 ms, the condition written out 30 ms.
CREATE OR REPLACE FUNCTION ledger_recharge_due(w wallets, p_available bigint, p_now timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT w.recharge_threshold IS NOT NULL AND p_available < w.recharge_threshold
           AND (w.recharge_resume_at IS NULL OR w.recharge_resume_at <= p_now)
$$;
