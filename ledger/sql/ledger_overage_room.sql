-- The overage rule, in one place: how much more a wallet may use past its available balance. 0 without
-- overage allowed; with it, what the cap leaves of the overage recorded (not yet closed) and reserved by open
-- holds, never below 0 (the cap may have been lowered since); with no cap, 2^62 milli-credits (more than any
-- cost, MAX_CREDITS_MILLI = 1e15, and a sum with any balance stays inside bigint).
-- Inlined by the planner like ledger_available. Read on the locked path only: the debit's fast path never goes
-- past the live plan bucket, so it never needs it.
CREATE OR REPLACE FUNCTION ledger_overage_room(w wallets) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN NOT w.overage_allowed THEN 0::bigint
                WHEN w.overage_cap IS NULL THEN 4611686018427387904::bigint
                ELSE greatest(w.overage_cap - w.overage - w.overage_held, 0) END
$$;
