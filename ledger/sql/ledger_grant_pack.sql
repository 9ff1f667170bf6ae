-- Grant a never-expiring pack bucket. Idempotent by p_key (the bucket's grant_key).
CREATE OR REPLACE FUNCTION ledger_grant_pack(p_org text, p_key text, p_amount bigint, p_now timestamptz,
                                             OUT status text, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    b buckets%ROWTYPE;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    w := ledger_refresh(w, p_now);
    SELECT * INTO b FROM buckets WHERE org_id = p_org AND grant_key = p_key;
    IF FOUND THEN
        replayed := true;
        status := CASE WHEN b.kind = 'pack' AND b.granted = p_amount THEN 'ok' ELSE 'conflict' END;
    ELSE
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (p_org, p_key, 'pack', p_amount, p_amount, NULL, p_now) RETURNING * INTO b;
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, b.id, 'grant', p_amount, p_key, p_now);
        w.topup_remaining := w.topup_remaining + p_amount;
        w := ledger_rearm_low_balance(w);
        status := 'ok';
    END IF;
    available := ledger_available(w);
    PERFORM ledger_save(w, p_now);
END $$;
