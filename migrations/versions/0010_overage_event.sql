-- The overage.invoiced webhook event (docs/webhooks.md; issue 12): written in the transaction of its cause, as
-- 0007's are. Its cause is a row of overage_closes (0009): ledger_close_overage records one per key (a renewal's
-- `{org}:{period_start}:overage`) in the statement that takes the wallet's overage to the renewal's invoice, so
-- the event and the close commit together, or neither does. A repeat of the close (a retried charge, an
-- incident re-run, a dunning retry) finds its row and inserts nothing: no second event. A close of 0 credits
-- (no overage this period) is no event. The event's key is the close's key: its id is the same on every
-- delivery, and unique per organization (the close key starts with the organization).
CREATE FUNCTION events_from_overage_close() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'overage.invoiced', NEW.org_id || ':' || NEW.close_key,
        jsonb_build_object('credits', webhook_credits(NEW.credits), 'close_key', NEW.close_key,
                           'closed_at', webhook_time(NEW.created_at)),
        NEW.created_at);
    RETURN NULL;
END $$;
CREATE TRIGGER overage_closes_event AFTER INSERT ON overage_closes FOR EACH ROW
    WHEN (NEW.credits > 0)
    EXECUTE FUNCTION events_from_overage_close();
