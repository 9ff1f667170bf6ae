-- Close a wallet's overage, exactly once per key: take the recorded overage not yet closed (overage reserved by
-- open holds stays: it is recorded when they commit), record the figure under p_key (overage_closes), write an
-- 'overage_closed' entry for it (none for 0) and zero the wallet's sum. A repeat of the key answers the first
-- figure, replayed, and writes nothing, whatever overage was recorded since.
-- One statement from the client, so one transaction: a connection dropped or a process killed before its
-- commit leaves none of it (tests/ledger/test_overage.py kills a close waiting between its entry and its key).
-- Statuses: ok, unknown_org.
CREATE OR REPLACE FUNCTION ledger_close_overage(p_org text, p_key text, p_now timestamptz,
                                                OUT status text, OUT credits bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    status := 'ok';
    SELECT c.credits INTO credits FROM overage_closes c WHERE c.org_id = p_org AND c.close_key = p_key;
    IF FOUND THEN
        replayed := true;
        RETURN;
    END IF;
    credits := w.overage;
    IF credits > 0 THEN
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, NULL, 'overage_closed', credits, p_key, p_now);
        UPDATE wallets SET overage = 0, updated_at = p_now WHERE org_id = p_org;
    END IF;
    -- The key last: the primary key arbitrates, and nothing above stands without it (one transaction).
    INSERT INTO overage_closes (org_id, close_key, credits, created_at) VALUES (p_org, p_key, credits, p_now);
END $$;
