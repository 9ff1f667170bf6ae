-- The low-balance alert re-arms once the available balance is back at or above its threshold (a grant, a
-- new period, a plan change); ledger_alerts disarms it when a debit or a commit crosses below.
CREATE OR REPLACE FUNCTION ledger_rearm_low_balance(w wallets) RETURNS wallets
LANGUAGE plpgsql AS $$
BEGIN
    IF w.low_balance_threshold IS NOT NULL AND ledger_available(w) >= w.low_balance_threshold THEN
        w.low_balance_armed := true;
    END IF;
    RETURN w;
END $$;
