-- Outgoing webhooks (docs/webhooks.md): the events, written in the transaction of their cause, and the endpoints
-- they are delivered to, each with its delivery cursor. Invariants (enforced by the definitions below):
--   W1 one event per cause: its id is evt_ + the hash of its type and its cause's business key (a repeat of the
--      cause writes nothing more), so it is the same on every delivery attempt
--   W2 events are numbered in commit order: webhook_event() holds a lock from the event's insert to the end of its
--      transaction, so once a reader has seen seq n no event below n can appear (GET /v1/events?after= and every
--      endpoint's cursor read without gaps)
--   W3 an endpoint is enabled iff it has no disabled_at, and a disabled one says why
--   W4 an endpoint's cursor (delivered_seq) never moves back: what was delivered stays delivered (trigger)

CREATE TABLE events (
    seq         bigserial PRIMARY KEY,           -- the cursor: commit order (W2)
    id          text NOT NULL UNIQUE,            -- evt_<32 hex> (W1): the webhook-id header
    org_id      text NOT NULL,
    type        text NOT NULL,                   -- models/webhook_types.py EVENT_TYPES
    data        jsonb NOT NULL,                  -- no personal data (no email address, no name)
    created_at  timestamptz NOT NULL             -- business time of the cause
);
CREATE INDEX events_org ON events (org_id, seq);
CREATE INDEX events_type ON events (type, seq);

CREATE TABLE webhook_endpoints (
    id               text PRIMARY KEY,           -- whe_<16 hex>
    org_id           text,                       -- NULL: platform-wide (every organization's events)
    url              text NOT NULL,
    secret           text NOT NULL CHECK (secret LIKE 'whsec\_%'),  -- Standard Webhooks signing key
    event_types      text[] NOT NULL CHECK (cardinality(event_types) > 0),
    description      text NOT NULL DEFAULT '',
    owner_email      text,                       -- who is told when the engine disables it (else the org's contact)
    enabled          boolean NOT NULL DEFAULT true,
    disabled_at      timestamptz,
    disabled_reason  text,                       -- 'failing': failing for longer than the configured time
    created_by       text,                       -- the API key that created it
    created_at       timestamptz NOT NULL,
    deleted_at       timestamptz,
    -- Delivery state, written by the delivery activity (activities/webhooks.py):
    delivered_seq    bigint NOT NULL,            -- every matching event up to this seq is delivered (W4)
    failing_since    timestamptz,                -- the first failed attempt since the last delivery
    failed_attempts  integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    last_error       text,
    last_attempt_at  timestamptz,
    last_success_at  timestamptz,
    CHECK (enabled = (disabled_at IS NULL)),
    CHECK ((disabled_at IS NULL) = (disabled_reason IS NULL))
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, created_at);
CREATE INDEX webhook_endpoints_live ON webhook_endpoints (id) WHERE enabled AND deleted_at IS NULL;

CREATE FUNCTION webhook_endpoints_cursor_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.delivered_seq < OLD.delivered_seq THEN
        RAISE EXCEPTION 'webhook endpoint %: delivered_seq % cannot move back to %', OLD.id, OLD.delivered_seq,
            NEW.delivered_seq;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER webhook_endpoints_cursor_forward BEFORE UPDATE OF delivered_seq ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION webhook_endpoints_cursor_forward();

-- A time as the events' data spells it, whatever the session's time zone: 2026-01-15T12:00:00Z.
CREATE FUNCTION webhook_time(p_at timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;

-- Credits as the API spells them: milli-credits -> a decimal string without trailing zeros ("12.5").
CREATE FUNCTION webhook_credits(p_milli bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT trim_scale(p_milli::numeric / 1000)::text
$$;

CREATE FUNCTION webhook_event_id(p_type text, p_key text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'evt_' || left(encode(sha256(convert_to(p_type || ':' || p_key, 'UTF8')), 'hex'), 32)
$$;

-- Write the event of a cause, in the cause's transaction. The lock (W2) is held until that transaction ends:
-- event-writing transactions commit one after the other from here on, in seq order. They are short (a debit
-- crossing an alert, a payment's outcome with its invoice, an email's outbox row), and none takes a wallet
-- lock after this one, so the order of locks is always wallet, then events.
CREATE FUNCTION webhook_event(p_org text, p_type text, p_key text, p_data jsonb, p_at timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(2003133032, 1);  -- 'webh', 1
    INSERT INTO events (id, org_id, type, data, created_at)
        VALUES (webhook_event_id(p_type, p_key), p_org, p_type, p_data, p_at)
        ON CONFLICT (id) DO NOTHING;
END $$;

-- alerts (0001): 80% and 100% of the plan credits, low balance, a usage guard paused.
CREATE FUNCTION events_from_alert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
    v_data jsonb;
BEGIN
    CASE NEW.kind
    WHEN 'plan_80', 'plan_100' THEN
        v_type := CASE NEW.kind WHEN 'plan_80' THEN 'credits.usage_80' ELSE 'credits.usage_100' END;
        v_data := jsonb_build_object('alert_id', NEW.id, 'percent', CASE NEW.kind WHEN 'plan_80' THEN 80 ELSE 100 END,
                                     'period_start', webhook_time(to_timestamp(NEW.period_key::bigint)));
    WHEN 'low_balance' THEN
        v_type := 'credits.low_balance';
        v_data := jsonb_build_object('alert_id', NEW.id, 'available', webhook_credits(NEW.detail::bigint),
                                     'threshold', (SELECT webhook_credits(low_balance_threshold) FROM wallets
                                                   WHERE org_id = NEW.org_id));
    WHEN 'usage_guard_paused' THEN
        v_type := 'usage_guard.paused';
        v_data := jsonb_build_object('alert_id', NEW.id, 'action', NEW.detail);
    ELSE
        RETURN NULL;
    END CASE;
    PERFORM webhook_event(NEW.org_id, v_type, 'alert:' || NEW.id, v_data, NEW.created_at);
    RETURN NULL;
END $$;
CREATE TRIGGER alerts_event AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION events_from_alert();

-- payments (0002): a charge's outcome, succeeded or declined.
CREATE FUNCTION events_from_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('succeeded', 'declined') OR (TG_OP = 'UPDATE' AND OLD.status = NEW.status) THEN
        RETURN NULL;
    END IF;
    PERFORM webhook_event(
        NEW.org_id, CASE NEW.status WHEN 'succeeded' THEN 'payment.succeeded' ELSE 'payment.failed' END, NEW.key,
        jsonb_build_object('payment_key', NEW.key, 'purpose', NEW.purpose, 'amount_cents', NEW.amount_cents,
                           'currency', NEW.currency, 'description', NEW.description,
                           'decline_code', NEW.decline_code, 'stripe_payment_intent', NEW.stripe_payment_intent),
        NEW.updated_at);
    RETURN NULL;
END $$;
CREATE TRIGGER payments_event AFTER INSERT OR UPDATE OF status ON payments
    FOR EACH ROW EXECUTE FUNCTION events_from_payment();

-- invoices (0002): issued in the transaction that records the payment's success.
CREATE FUNCTION events_from_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'invoice.issued', NEW.number,
        jsonb_build_object('number', NEW.number, 'payment_key', NEW.payment_key, 'purpose', NEW.purpose,
                           'issued_at', webhook_time(NEW.issued_at), 'currency', NEW.currency, 'lines', NEW.lines,
                           'subtotal_cents', NEW.subtotal_cents, 'tax_rate', NEW.tax_rate::text,
                           'tax_cents', NEW.tax_cents, 'total_cents', NEW.total_cents),
        NEW.issued_at);
    RETURN NULL;
END $$;
CREATE TRIGGER invoices_event AFTER INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION events_from_invoice();

-- auto_recharge (0003): turned off by the engine (disabled_reason: payment_failed), not by its owner.
CREATE FUNCTION events_from_auto_recharge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'auto_recharge.disabled', NEW.org_id || ':' || NEW.version,
        jsonb_build_object('reason', NEW.disabled_reason, 'pack', NEW.pack,
                           'threshold', webhook_credits(NEW.threshold),
                           'spending_limit_cents', NEW.spending_limit_cents),
        NEW.updated_at);
    RETURN NULL;
END $$;
CREATE TRIGGER auto_recharge_event AFTER UPDATE ON auto_recharge FOR EACH ROW
    WHEN (OLD.enabled AND NOT NEW.enabled AND NEW.disabled_reason IS NOT NULL)
    EXECUTE FUNCTION events_from_auto_recharge();
