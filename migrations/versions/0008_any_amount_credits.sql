-- Auto-recharge may buy an amount of credits as well as a pack (issue 12, seed 004; docs/product.md).
-- auto_recharge.pack holds what a recharge buys: a pack's name ("500"), or 'credits:' and an amount of credits
-- written as a plain decimal ("credits:250", "credits:100.5"): ledger/auto_recharge.py reads and writes it.
-- Nothing else changes shape, so the settings stay one row and one column as the debit path knows them.
ALTER TABLE auto_recharge ADD CONSTRAINT auto_recharge_buys
    CHECK (pack <> '' AND (pack NOT LIKE 'credits:%' OR pack ~ '^credits:[0-9]+(\.[0-9]{1,3})?$'));

-- The auto_recharge.disabled event (0007) names a pack, or the amount of credits (`pack` null).
CREATE OR REPLACE FUNCTION events_from_auto_recharge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'auto_recharge.disabled', NEW.org_id || ':' || NEW.version,
        jsonb_build_object('reason', NEW.disabled_reason,
                           'pack', CASE WHEN NEW.pack LIKE 'credits:%' THEN NULL ELSE NEW.pack END,
                           'credits', CASE WHEN NEW.pack LIKE 'credits:%' THEN substr(NEW.pack, 9) END,
                           'threshold', webhook_credits(NEW.threshold),
                           'spending_limit_cents', NEW.spending_limit_cents),
        NEW.updated_at);
    RETURN NULL;
END $$;
