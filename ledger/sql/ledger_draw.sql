-- Draw p_amount from the live buckets, soonest expiry first, then packs oldest first. The caller has
-- checked that the live balance covers it. Returns the wallet with its class balances reduced and the
-- plan credits consumed counted.
CREATE OR REPLACE FUNCTION ledger_draw(w wallets, p_amount bigint, p_ref text, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
DECLARE
    b record;
    v_left bigint := p_amount;
    v_take bigint;
BEGIN
    -- The live plan bucket expires soonest (packs never do): it goes first.
    IF w.plan_remaining > 0 THEN
        v_take := least(w.plan_remaining, v_left);
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (w.org_id, w.plan_bucket_id, 'debit', -v_take, p_ref, p_now);
        w.plan_remaining := w.plan_remaining - v_take;
        w.consumed := w.consumed + v_take;
        v_left := v_left - v_take;
    END IF;
    IF v_left > 0 THEN
        FOR b IN SELECT id, remaining FROM buckets
                 WHERE org_id = w.org_id AND kind = 'pack' AND remaining > 0 ORDER BY id LOOP
            v_take := least(b.remaining, v_left);
            UPDATE buckets SET remaining = remaining - v_take WHERE id = b.id;
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, b.id, 'debit', -v_take, p_ref, p_now);
            w.topup_remaining := w.topup_remaining - v_take;
            v_left := v_left - v_take;
            EXIT WHEN v_left = 0;
        END LOOP;
    END IF;
    IF v_left <> 0 THEN
        RAISE EXCEPTION 'ledger_draw: % short by % for %', w.org_id, v_left, p_ref;
    END IF;
    RETURN w;
END $$;
