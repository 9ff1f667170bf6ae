-- The plan-consumption alert rule: did this period's consumption cross p_pct percent of the allocation,
-- below it before, at or above it after? (80 and 100 are the alert marks; an allocation of 0 crosses
-- nothing.) Exact integer arithmetic, as `before * 5 < allocation * 4` was for 80%; bigint holds it up to
-- 9.2e16 milli-credits, 90 times the largest cost the gateway accepts (MAX_COST_MILLI).
-- Inlined like ledger_available (see there): 1e6 plpgsql evaluations took 53 ms, the inline
-- expression 54 ms; in ledger_debit's fast-path UPDATE it becomes plain column expressions.
CREATE OR REPLACE FUNCTION ledger_crossed(p_before bigint, p_after bigint, p_allocation bigint, p_pct integer)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT p_allocation > 0 AND p_before * 100 < p_allocation * p_pct AND p_after * 100 >= p_allocation * p_pct
$$;
