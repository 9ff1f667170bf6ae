-- A cold-path operation's idempotency (start_period, change_plan): NULL when the key is new, 'ok' when it
-- was already used for this very request (a repeat: nothing is written again), 'conflict' when it was used
-- for another. The caller holds the wallet lock, so the answer stands until it records the key.
CREATE OR REPLACE FUNCTION ledger_op_repeat(p_org text, p_key text, p_request text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN request = p_request THEN 'ok' ELSE 'conflict' END
    FROM wallet_ops WHERE org_id = p_org AND op_key = p_key
$$;
