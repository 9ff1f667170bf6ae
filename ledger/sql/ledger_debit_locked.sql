-- One debit decided under the wallet lock the caller holds: catch up with time, check every rule,
-- claim the idempotency key, draw (past the balance, record the rest as overage when the terms allow it),
-- record alerts, take the auto-recharge lease when the debit crosses its threshold. Returns the wallet as changed (the caller saves it when dirty) and the debit's result.
-- p_tags: the debit's tags (NULL for none), stored on its usage row and compared on a repeat like every other
-- field. The drop names the signature before p_tags.
DROP FUNCTION IF EXISTS ledger_debit_locked(wallets, text, text, text, numeric, text, text, bigint, timestamptz);
CREATE OR REPLACE FUNCTION ledger_debit_locked(w wallets, p_key text, p_action text, p_tier text, p_qty numeric,
                                               p_country text, p_user text, p_tags jsonb, p_cost bigint,
                                               p_now timestamptz)
RETURNS ledger_step LANGUAGE plpgsql AS $$
DECLARE
    r ledger_step;
    u usage_events%ROWTYPE;
    v_before bigint;
    v_draw bigint;
BEGIN
    r.replayed := false; r.cost := p_cost; r.dirty := false; r.recharge := false;
    IF w.open_holds > 0 OR w.plan_expires_at <= p_now OR (w.plan_expires_at IS NULL AND w.daily_grant > 0) THEN
        w := ledger_refresh(w, p_now);
        r.dirty := true;  -- keep what ledger_refresh caught up with, whatever this debit's fate
    END IF;
    IF w.has_guards AND EXISTS (SELECT 1 FROM usage_events WHERE org_id = w.org_id AND idem_key = p_key) THEN
        -- A repeat is answered before the rules: a usage guard's check writes (the pause and its alert),
        -- and a replay writes nothing. (Without guards the checks write nothing: no lookup needed.)
        r.status := 'repeat';
    ELSE
        SELECT c.status, c.detail_a, c.detail_b INTO r.status, r.detail_a, r.detail_b
            FROM ledger_check(w, p_action, p_tier, p_user, p_cost, false, p_key, p_now) c;
    END IF;
    r.available := ledger_available(w);
    IF r.status IS NULL THEN
        -- Claim the idempotency key; the primary key arbitrates, so a repeat is found without a lookup.
        INSERT INTO usage_events (org_id, idem_key, source, action, tier, quantity, country, user_id, tags, cost,
                                  created_at)
            VALUES (w.org_id, p_key, 'debit', p_action, p_tier, p_qty, p_country, p_user, p_tags, p_cost, p_now)
            ON CONFLICT (org_id, idem_key) DO NOTHING;
        IF NOT FOUND THEN
            r.status := 'repeat';
        END IF;
    END IF;
    IF r.status IS NOT NULL THEN
        -- Nothing of this debit is written. A repeat of a key that already succeeded returns the first
        -- result's charge; different content under the same key is a conflict.
        SELECT * INTO u FROM usage_events WHERE org_id = w.org_id AND idem_key = p_key;
        IF FOUND THEN
            r.replayed := true; r.cost := u.cost; r.detail_a := NULL; r.detail_b := NULL;
            IF u.source <> 'debit' OR u.action <> p_action OR u.tier IS DISTINCT FROM p_tier
               OR u.quantity <> p_qty OR u.country IS DISTINCT FROM p_country
               OR u.user_id IS DISTINCT FROM p_user OR u.tags IS DISTINCT FROM p_tags THEN
                r.status := 'conflict';
            ELSE
                r.status := 'ok';
            END IF;
        END IF;
        r.w := w;
        RETURN r;
    END IF;
    v_before := w.consumed;
    -- What the balance covers is drawn; the rest (ledger_check allowed it within the overage room) is overage.
    v_draw := least(p_cost, greatest(r.available, 0));
    IF v_draw > 0 THEN
        w := ledger_draw(w, v_draw, p_key, p_now);
    END IF;
    IF v_draw < p_cost THEN
        w := ledger_overage(w, p_cost - v_draw, p_key, p_now);
    END IF;
    r.available := r.available - v_draw;
    IF w.low_balance_armed AND r.available < w.low_balance_threshold
       OR ledger_crossed(v_before, w.consumed, w.allocation, 80)
       OR ledger_crossed(v_before, w.consumed, w.allocation, 100) THEN
        w := ledger_alerts(w, v_before, p_key, p_now);
    END IF;
    IF w.has_guards OR w.has_user_limits THEN
        PERFORM ledger_count_use(w, p_action, p_user, p_cost, p_now);
    END IF;
    IF ledger_recharge_due(w, r.available, p_now) THEN  -- take the lease; the caller signals
        w.recharge_resume_at := p_now + ledger_recharge_lease();
        r.recharge := true;
    END IF;
    r.status := 'ok'; r.dirty := true; r.w := w;
    RETURN r;
END $$;
