-- A notification that cannot be delivered never fails a money step, an update or a workflow (docs/product.md,
-- failure model rule 2): an email the SMTP server refuses for good (5xx) is recorded as failed on its outbox
-- row, with the server's answer, instead of failing its activity. Invariant (enforced by the checks below):
--   B5 an outbox row is sent or failed, never both; a failed row says why
ALTER TABLE outbox
    ADD COLUMN failed_at  timestamptz,
    ADD COLUMN error      text,
    ADD CONSTRAINT outbox_sent_or_failed CHECK (sent_at IS NULL OR failed_at IS NULL),
    ADD CONSTRAINT outbox_failed_has_error CHECK ((failed_at IS NULL) = (error IS NULL));
CREATE INDEX outbox_failed ON outbox (failed_at) WHERE failed_at IS NOT NULL;
