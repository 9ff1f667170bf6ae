-- Debits of one or several wallets in one transaction: one round trip and one commit for all of them (the
-- client's group commit, ledger/gateway.py: the debits that arrive while its debit calls are in flight go
-- together in the next one, whatever their organizations).
-- Items come grouped by organization, the groups in one order agreed by every caller (the gateway's: by
-- org_id, code points), which is the order the wallet locks are taken in: two batches never wait on each other
-- in a cycle. Each item is decided by exactly the rules of a single debit, in order, and gets its own result
-- row, in the order given. An organization alone in the batch is debited by ledger_debit itself (its fast
-- path); several debits of one organization take its lock once and save it once. p_tags: each debit's tags
-- (an element NULL for none). The drops name the signatures before: one wallet per batch, then before p_tags.
DROP FUNCTION IF EXISTS ledger_debit_batch(text, text[], text[], text[], numeric[], text[], text[], bigint[],
                                           timestamptz[]);
DROP FUNCTION IF EXISTS ledger_debit_batch(text[], text[], text[], text[], numeric[], text[], text[], bigint[],
                                           timestamptz[]);
CREATE OR REPLACE FUNCTION ledger_debit_batch(p_orgs text[], p_keys text[], p_actions text[], p_tiers text[],
                                              p_qtys numeric[], p_countries text[], p_users text[], p_tags jsonb[],
                                              p_costs bigint[], p_nows timestamptz[])
RETURNS TABLE (status text, cost bigint, available bigint, replayed boolean, detail_a bigint, detail_b bigint,
               recharge boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    r ledger_step;
    v_dirty boolean;
    v_n integer := cardinality(p_keys);
    v_first integer := 1;
    v_last integer;
BEGIN
    WHILE v_first <= v_n LOOP
        v_last := v_first;  -- this organization's items: v_first .. v_last
        WHILE v_last < v_n AND p_orgs[v_last + 1] = p_orgs[v_first] LOOP
            v_last := v_last + 1;
        END LOOP;
        IF v_last = v_first THEN
            SELECT d.status, d.cost, d.available, d.replayed, d.detail_a, d.detail_b, d.recharge
              INTO status, cost, available, replayed, detail_a, detail_b, recharge
              FROM ledger_debit(p_orgs[v_first], p_keys[v_first], p_actions[v_first], p_tiers[v_first],
                                p_qtys[v_first], p_countries[v_first], p_users[v_first], p_tags[v_first],
                                p_costs[v_first], p_nows[v_first]) d;
            RETURN NEXT;
        ELSE
            SELECT * INTO w FROM wallets WHERE org_id = p_orgs[v_first] FOR NO KEY UPDATE;  -- nulls if none
            v_dirty := false;
            FOR i IN v_first .. v_last LOOP
                IF w.org_id IS NULL THEN
                    status := 'unknown_org'; cost := p_costs[i]; available := NULL; replayed := false;
                    detail_a := NULL; detail_b := NULL; recharge := false;
                ELSE
                    r := ledger_debit_locked(w, p_keys[i], p_actions[i], p_tiers[i], p_qtys[i], p_countries[i],
                                             p_users[i], p_tags[i], p_costs[i], p_nows[i]);
                    w := r.w;
                    v_dirty := v_dirty OR r.dirty;
                    status := r.status; cost := r.cost; available := r.available; replayed := r.replayed;
                    detail_a := r.detail_a; detail_b := r.detail_b; recharge := r.recharge;
                END IF;
                RETURN NEXT;
            END LOOP;
            IF v_dirty THEN
                PERFORM ledger_save(w, p_nows[v_last]);
            END IF;
        END IF;
        v_first := v_last + 1;
    END LOOP;
END $$;
