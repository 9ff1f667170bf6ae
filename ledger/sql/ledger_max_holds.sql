-- The most holds a wallet may have open: its terms' limit (a contract's, set by ledger_set_terms), else its
-- plan's. One statement of the rule, inlined by the planner like ledger_available.
CREATE OR REPLACE FUNCTION ledger_max_holds(w wallets) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(w.concurrency_limit, w.max_holds)
$$;
