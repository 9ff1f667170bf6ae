-- Settle an open hold: commit charges its cost from the buckets (past the balance, as overage within the terms'
-- room: what it reserved in overage becomes recorded overage), release charges nothing (and gives back what it
-- reserved, overage included). A committed hold's usage row carries the hold's tags.
-- concurrency_limit / concurrency_open: the maximum of open holds (ledger_max_holds) and the live ones after
-- this call.
-- The drop names the signature before those OUT columns (CREATE OR REPLACE cannot add OUT columns).
DROP FUNCTION IF EXISTS ledger_settle(text, text, boolean, timestamptz);
CREATE OR REPLACE FUNCTION ledger_settle(p_org text, p_key text, p_commit boolean, p_now timestamptz,
                                         OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean,
                                         OUT concurrency_limit integer, OUT concurrency_open integer)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    h holds%ROWTYPE;
    v_before bigint;
    v_live bigint;
    v_charge bigint;
    v_draw bigint;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    w := ledger_refresh(w, p_now);  -- a hold past its TTL is released here, before we look at it
    SELECT * INTO h FROM holds WHERE org_id = p_org AND idem_key = p_key;
    IF NOT FOUND THEN
        status := 'hold_unknown';
    ELSIF h.status = 'open' THEN
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, NULL, 'release', h.cost, 'hold:' || p_key, p_now);
        w.held := w.held - (h.cost - h.overage);
        w.overage_held := w.overage_held - h.overage;
        w.open_holds := w.open_holds - 1;
        IF p_commit THEN
            -- Buckets can expire while a hold is open; never draw more than is left, nor record more overage
            -- than the terms allow now (its own reservation is back in the room, released above).
            v_live := greatest(ledger_available(w), 0);
            v_charge := least(h.cost, v_live + ledger_overage_room(w));
            v_draw := least(v_charge, v_live);
            v_before := w.consumed;
            IF v_draw > 0 THEN
                w := ledger_draw(w, v_draw, 'hold:' || p_key, p_now);
            END IF;
            IF v_draw < v_charge THEN
                w := ledger_overage(w, v_charge - v_draw, 'hold:' || p_key, p_now);
            END IF;
            w := ledger_alerts(w, v_before, 'hold:' || p_key, p_now);
            IF w.has_guards OR w.has_user_limits THEN
                PERFORM ledger_count_use(w, h.action, h.user_id, v_charge, p_now);
            END IF;
            INSERT INTO usage_events (org_id, idem_key, source, action, tier, quantity, country, user_id, tags,
                                      cost, created_at)
                VALUES (p_org, 'hold:' || p_key, 'hold', h.action, h.tier, h.quantity, h.country, h.user_id, h.tags,
                        v_charge, p_now);
            UPDATE holds SET status = 'committed', settled_at = p_now, cost = v_charge, overage = v_charge - v_draw
                WHERE org_id = p_org AND idem_key = p_key;
            h.cost := v_charge;
        ELSE
            UPDATE holds SET status = 'released', settled_at = p_now WHERE org_id = p_org AND idem_key = p_key;
        END IF;
        status := 'ok';
    ELSIF (h.status = 'committed' AND p_commit) OR (h.status = 'released' AND NOT p_commit) THEN
        status := 'ok'; replayed := true;
    ELSE
        status := 'hold_' || h.status;
    END IF;
    cost := CASE WHEN p_commit THEN h.cost ELSE 0 END;
    available := ledger_available(w);
    concurrency_limit := ledger_max_holds(w); concurrency_open := w.open_holds;
    PERFORM ledger_save(w, p_now);
END $$;
