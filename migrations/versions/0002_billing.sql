-- Billing records: customers, payments, invoices, the email outbox (the ledger's mid-period plan change,
-- and the trigger enforcing B4, are in ledger/sql/). Invariants (asserted by tests/support/invariants.py after every test):
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
