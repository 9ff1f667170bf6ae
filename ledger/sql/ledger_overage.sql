-- Record p_amount of overage (credits used past the available balance, owed by the organization): one
-- 'overage' entry of minus the amount, no bucket (nothing is drawn), and the wallet's sum of overage not yet
-- closed. The caller checked the overage room (ledger_check, ledger_overage_room). Returns the wallet changed.
CREATE OR REPLACE FUNCTION ledger_overage(w wallets, p_amount bigint, p_ref text, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
        VALUES (w.org_id, NULL, 'overage', -p_amount, p_ref, p_now);
    w.overage := w.overage + p_amount;
    RETURN w;
END $$;
