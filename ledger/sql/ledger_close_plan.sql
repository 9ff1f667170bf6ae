-- Close the live plan bucket: an explicit expire entry for what is left, and its final remaining (0).
CREATE OR REPLACE FUNCTION ledger_close_plan(w wallets, p_ref text, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
BEGIN
    IF w.plan_bucket_id IS NOT NULL THEN
        IF w.plan_remaining > 0 THEN
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, w.plan_bucket_id, 'expire', -w.plan_remaining, p_ref, p_now);
        END IF;
        UPDATE buckets SET remaining = 0 WHERE id = w.plan_bucket_id;
    END IF;
    w.plan_remaining := 0;
    w.plan_bucket_id := NULL;
    w.plan_expires_at := NULL;
    RETURN w;
END $$;
