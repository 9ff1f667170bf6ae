-- Set a wallet's terms (what the ledger enforces of a contract): overage allowed, its cap (NULL: none), the
-- open-hold limit (NULL: the plan's). changed is false when they were already these (nothing written, so
-- setting the same terms twice is one change). The overage recorded and reserved stays: a lower cap or overage
-- no longer allowed refuses what would go past the new room, and holds reserved in overage commit within it.
-- Start_period and change_plan set the plan's max_holds only: the limit here survives renewals and plan changes.
-- The gateway validated the values (ledger/gateway.py Ledger.set_terms); the columns' checks back it.
CREATE OR REPLACE FUNCTION ledger_set_terms(p_org text, p_overage_allowed boolean, p_overage_cap bigint,
                                            p_concurrency_limit integer, p_now timestamptz,
                                            OUT status text, OUT changed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    changed := false;
    -- One UPDATE takes the wallet lock, as the ledger's other writes do, and writes only a change.
    UPDATE wallets SET overage_allowed = p_overage_allowed, overage_cap = p_overage_cap,
                       concurrency_limit = p_concurrency_limit, updated_at = p_now
        WHERE org_id = p_org
          AND (overage_allowed, overage_cap, concurrency_limit)
              IS DISTINCT FROM (p_overage_allowed, p_overage_cap, p_concurrency_limit);
    IF FOUND THEN
        status := 'ok'; changed := true;
    ELSIF EXISTS (SELECT 1 FROM wallets WHERE org_id = p_org) THEN
        status := 'ok';
    ELSE
        status := 'unknown_org';
    END IF;
END $$;
