-- Reserve p_cost for a later settle (ledger_settle), under the same rules as a debit plus the plan's
-- concurrency. A reservation can cross the auto-recharge threshold too: `recharge` as in ledger_debit.
-- concurrency_limit / concurrency_open: the maximum of open holds (ledger_max_holds: the terms' limit, else the
-- plan's) and the live ones after this call (expired ones released by ledger_refresh first), for the answer's
-- concurrency headers in the same trip. Past the balance, with overage allowed, the part of the cost the
-- balance does not cover is reserved in overage (holds.overage, wallets.overage_held) within the cap; the hold
-- entry is of the whole cost. p_tags: the hold's tags (NULL for none), stored on it, compared on a repeat and
-- copied to its usage row when it is committed (ledger_settle). The drop names the signature before p_tags
-- (the one before the OUT columns had the same arguments: CREATE OR REPLACE cannot add OUT columns).
DROP FUNCTION IF EXISTS ledger_hold(text, text, text, text, numeric, text, text, bigint, timestamptz, timestamptz);
CREATE OR REPLACE FUNCTION ledger_hold(p_org text, p_key text, p_action text, p_tier text, p_qty numeric,
                                       p_country text, p_user text, p_tags jsonb, p_cost bigint,
                                       p_expires_at timestamptz, p_now timestamptz,
                                       OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean,
                                       OUT detail_a bigint, OUT detail_b bigint, OUT recharge boolean,
                                       OUT concurrency_limit integer, OUT concurrency_open integer)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    h holds%ROWTYPE;
    v_over bigint;
BEGIN
    replayed := false; cost := p_cost; recharge := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    w := ledger_refresh(w, p_now);
    available := ledger_available(w);
    SELECT * INTO h FROM holds WHERE org_id = p_org AND idem_key = p_key;
    IF FOUND THEN
        replayed := true; cost := h.cost;
        IF h.action <> p_action OR h.tier IS DISTINCT FROM p_tier OR h.quantity <> p_qty
           OR h.country IS DISTINCT FROM p_country OR h.user_id IS DISTINCT FROM p_user
           OR h.tags IS DISTINCT FROM p_tags THEN
            status := 'conflict';
        ELSIF h.status = 'open' THEN
            status := 'ok';
        ELSE
            status := 'hold_' || h.status;
        END IF;
        concurrency_limit := ledger_max_holds(w); concurrency_open := w.open_holds;
        PERFORM ledger_save(w, p_now);
        RETURN;
    END IF;
    SELECT * INTO status, detail_a, detail_b
        FROM ledger_check(w, p_action, p_tier, p_user, p_cost, true, p_key, p_now);
    IF status IS NULL THEN
        v_over := p_cost - least(p_cost, greatest(available, 0));  -- 0 unless past the balance (overage)
        INSERT INTO holds (org_id, idem_key, action, tier, quantity, country, user_id, tags, cost, overage, status,
                           expires_at, created_at)
            VALUES (p_org, p_key, p_action, p_tier, p_qty, p_country, p_user, p_tags, p_cost, v_over, 'open',
                    p_expires_at, p_now);
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, NULL, 'hold', -p_cost, 'hold:' || p_key, p_now);
        w.held := w.held + p_cost - v_over;
        w.overage_held := w.overage_held + v_over;
        w.open_holds := w.open_holds + 1;
        available := available - (p_cost - v_over);
        status := 'ok';
        -- A reservation lowers the available balance as a debit does: same auto-recharge trigger.
        IF ledger_recharge_due(w, available, p_now) THEN
            w.recharge_resume_at := p_now + ledger_recharge_lease();
            recharge := true;
        END IF;
    END IF;
    concurrency_limit := ledger_max_holds(w); concurrency_open := w.open_holds;
    PERFORM ledger_save(w, p_now);
END $$;
