-- Enforces invariant B4 (stated in migrations/versions/0002_billing.sql) on every update of an outbox row.
-- The trigger is created here with its function, so a change of either is re-applied together.
CREATE OR REPLACE FUNCTION outbox_sent_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.sent_at IS NOT NULL AND NEW.sent_at IS DISTINCT FROM OLD.sent_at THEN
        RAISE EXCEPTION 'outbox %: already sent at %', OLD.key, OLD.sent_at;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER outbox_sent_once BEFORE UPDATE ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_sent_once();
