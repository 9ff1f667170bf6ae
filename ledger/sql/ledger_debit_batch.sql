-- Several debits of one wallet in one transaction: one lock, one save, one commit for all of them.
-- The client batches concurrent debits of the same organization (ledger/gateway.py); each item is
-- decided by exactly the rules of a single debit, in order, and gets its own result row.
CREATE OR REPLACE FUNCTION ledger_debit_batch(p_org text, p_keys text[], p_actions text[], p_tiers text[],
                                              p_qtys numeric[], p_countries text[], p_users text[], p_costs bigint[],
                                              p_nows timestamptz[])
RETURNS TABLE (status text, cost bigint, available bigint, replayed boolean, detail_a bigint, detail_b bigint,
               recharge boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    r ledger_step;
    v_dirty boolean := false;
BEGIN
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    FOR i IN 1 .. cardinality(p_keys) LOOP
        IF w.org_id IS NULL THEN
            status := 'unknown_org'; cost := p_costs[i]; available := NULL; replayed := false; recharge := false;
        ELSE
            r := ledger_debit_locked(w, p_keys[i], p_actions[i], p_tiers[i], p_qtys[i], p_countries[i],
                                     p_users[i], p_costs[i], p_nows[i]);
            w := r.w;
            v_dirty := v_dirty OR r.dirty;
            status := r.status; cost := r.cost; available := r.available; replayed := r.replayed;
            detail_a := r.detail_a; detail_b := r.detail_b; recharge := r.recharge;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_dirty THEN
        PERFORM ledger_save(w, p_nows[cardinality(p_nows)]);
    END IF;
END $$;
