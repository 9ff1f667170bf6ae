-- Billing records: customers, payments, invoices, the email outbox; and the ledger's mid-period plan
-- change (upgrade). Invariants (asserted by tests/invariants.py after every test):
--   B1 a succeeded payment has exactly one invoice, for its amount; a pending or declined one has none
--   B2 invoice numbers are gapless per year: the seqs of a year are exactly 1..invoice_counters.last
--   B3 an invoice's total = subtotal + tax
--   B4 an outbox row is sent at most once: sent_at is set once and never changes (enforced by trigger)

CREATE TABLE billing_profiles (
    org_id              text PRIMARY KEY CHECK (org_id <> ''),
    email               text NOT NULL,
    currency            text NOT NULL DEFAULT 'EUR',
    vat_rate            numeric NOT NULL DEFAULT 0 CHECK (vat_rate >= 0 AND vat_rate < 1),
    stripe_customer_id  text,
    payment_method_id   text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- One row per charge, written BEFORE Stripe is called; its key is the business key
-- ({org}:{period_start}:{purpose}) and the Stripe Idempotency-Key. A retry that finds the row pending
-- looks for the PaymentIntent tagged with the key before creating one.
CREATE TABLE payments (
    key                    text PRIMARY KEY,
    org_id                 text NOT NULL,
    purpose                text NOT NULL,
    amount_cents           bigint NOT NULL CHECK (amount_cents > 0),
    currency               text NOT NULL,
    description            text NOT NULL,
    request                jsonb NOT NULL,    -- lines and tax: a repeat with other content is a conflict
    status                 text NOT NULL CHECK (status IN ('pending', 'succeeded', 'declined')),
    stripe_payment_intent  text UNIQUE,
    decline_code           text,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    CHECK ((status = 'succeeded') <= (stripe_payment_intent IS NOT NULL))
);
CREATE INDEX payments_org ON payments (org_id, created_at);

CREATE TABLE invoice_counters (
    year  integer PRIMARY KEY,
    last  integer NOT NULL CHECK (last >= 0)
);

CREATE TABLE invoices (
    number             text PRIMARY KEY,           -- INV-YYYY-NNNNNN
    year               integer NOT NULL,
    seq                integer NOT NULL CHECK (seq > 0),
    org_id             text NOT NULL,
    payment_key        text NOT NULL UNIQUE REFERENCES payments (key),
    purpose            text NOT NULL,
    issued_at          timestamptz NOT NULL,
    currency           text NOT NULL,
    lines              jsonb NOT NULL,
    subtotal_cents     bigint NOT NULL CHECK (subtotal_cents >= 0),
    tax_rate           numeric NOT NULL CHECK (tax_rate >= 0),
    tax_cents          bigint NOT NULL CHECK (tax_cents >= 0),
    total_cents        bigint NOT NULL CHECK (total_cents > 0),
    stripe_payment_id  text NOT NULL,
    html               text NOT NULL,
    UNIQUE (year, seq),
    CHECK (total_cents = subtotal_cents + tax_cents)
);
CREATE INDEX invoices_org ON invoices (org_id, issued_at);

-- Every email, rendered, keyed by its business key: written before the SMTP send, stamped after.
CREATE TABLE outbox (
    key         text PRIMARY KEY,
    org_id      text NOT NULL,
    template    text NOT NULL,
    to_addr     text NOT NULL,
    subject     text NOT NULL,
    text_body   text NOT NULL,
    html_body   text NOT NULL,
    created_at  timestamptz NOT NULL,
    sent_at     timestamptz
);
CREATE INDEX outbox_org ON outbox (org_id, created_at);
CREATE INDEX outbox_unsent ON outbox (created_at) WHERE sent_at IS NULL;

CREATE FUNCTION outbox_sent_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.sent_at IS NOT NULL AND NEW.sent_at IS DISTINCT FROM OLD.sent_at THEN
        RAISE EXCEPTION 'outbox %: already sent at %', OLD.key, OLD.sent_at;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER outbox_sent_once BEFORE UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_sent_once();

-- Upgrade mid-period: the new plan's terms apply now; the plan bucket is replaced by one holding the new
-- allocation minus the plan credits consumed this period (never below 0), expiring at the same period
-- end. Packs are untouched. Idempotent by p_key. 'no_period' for a wallet on the free (daily) plan.
CREATE FUNCTION ledger_change_plan(p_org text, p_key text, p_plan text, p_tiers text[], p_max_holds integer,
                                   p_allocation bigint, p_now timestamptz,
                                   OUT status text, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    v_request text := concat_ws('|', 'change', p_plan, array_to_string(p_tiers, ','), p_max_holds, p_allocation);
    v_prev text;
    v_left bigint;
    v_bucket bigint;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    SELECT request INTO v_prev FROM wallet_ops WHERE org_id = p_org AND op_key = p_key;
    IF FOUND THEN
        replayed := true;
        status := CASE WHEN v_prev = v_request THEN 'ok' ELSE 'conflict' END;
        available := w.plan_remaining + w.topup_remaining - w.held;
        RETURN;
    END IF;
    w := ledger_refresh(w, p_now);
    IF w.daily_grant > 0 OR w.period_end IS NULL THEN
        status := 'no_period'; RETURN;
    END IF;
    INSERT INTO wallet_ops (org_id, op_key, request, created_at) VALUES (p_org, p_key, v_request, p_now);
    w := ledger_close_plan(w, p_key, p_now);
    w.plan := p_plan; w.tiers := p_tiers; w.max_holds := p_max_holds; w.allocation := p_allocation;
    v_left := greatest(p_allocation - w.consumed, 0);
    -- A period that has just ended (its renewal not yet run) takes the new terms only: the renewal
    -- grants the new plan's allocation.
    IF v_left > 0 AND w.period_end > p_now THEN
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (p_org, p_key, 'plan', v_left, v_left, w.period_end, p_now) RETURNING id INTO v_bucket;
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, v_bucket, 'grant', v_left, p_key, p_now);
        w.plan_remaining := v_left;
        w.plan_expires_at := w.period_end;
        w.plan_bucket_id := v_bucket;
    END IF;
    IF w.low_balance_threshold IS NOT NULL
       AND w.plan_remaining + w.topup_remaining - w.held >= w.low_balance_threshold THEN
        w.low_balance_armed := true;
    END IF;
    PERFORM ledger_save(w, p_now);
    status := 'ok';
    available := w.plan_remaining + w.topup_remaining - w.held;
END $$;
