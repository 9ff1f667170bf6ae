-- The credit ledger. Invariants (asserted by tests/support/invariants.py after every test):
--   I1 a bucket's remaining = sum(ledger_entries.amount) of its entries, 0 <= remaining <= granted; for the
--      live plan bucket (wallet.plan_bucket_id) the remaining is wallet.plan_remaining: the debit's hot
--      row is the wallet alone, so the bucket row is only written when the bucket opens and closes
--   I2 wallet.topup_remaining = sum(remaining) of its pack buckets; plan_remaining = 0 with no live bucket
--   I3 wallet.held = -sum(amount) of its reservation entries (bucket_id IS NULL) = sum(cost) of open holds
--   I4 a plan bucket that is not live has remaining 0 (closed by an explicit expire entry)
-- Every write to an organization's rows happens under its wallet row lock, so the ledger functions
-- (ledger/sql/, applied after the migrations by ledger/migrate.py) serialise per organization and never
-- overdraw.

CREATE TABLE wallets (
    org_id                text PRIMARY KEY CHECK (org_id <> ''),
    plan                  text NOT NULL,
    tiers                 text[] NOT NULL,
    max_holds             integer NOT NULL CHECK (max_holds > 0),
    daily_grant           bigint NOT NULL DEFAULT 0 CHECK (daily_grant >= 0),
    period_start          timestamptz NOT NULL,
    period_end            timestamptz,
    allocation            bigint NOT NULL DEFAULT 0 CHECK (allocation >= 0),
    consumed              bigint NOT NULL DEFAULT 0 CHECK (consumed >= 0),
    plan_remaining        bigint NOT NULL DEFAULT 0 CHECK (plan_remaining >= 0),
    plan_expires_at       timestamptz,
    plan_bucket_id        bigint,        -- the live plan bucket: the debit's fast path draws it directly
    topup_remaining       bigint NOT NULL DEFAULT 0 CHECK (topup_remaining >= 0),
    held                  bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    open_holds            integer NOT NULL DEFAULT 0 CHECK (open_holds >= 0),
    low_balance_threshold bigint CHECK (low_balance_threshold >= 0),
    low_balance_armed     boolean NOT NULL DEFAULT true,
    has_user_limits       boolean NOT NULL DEFAULT false,
    has_guards            boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);

CREATE TABLE buckets (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL REFERENCES wallets (org_id),
    grant_key   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('plan', 'pack')),
    granted     bigint NOT NULL CHECK (granted > 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0 AND remaining <= granted),
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL,
    UNIQUE (org_id, grant_key),
    CHECK ((kind = 'plan') = (expires_at IS NOT NULL))
);
-- Packs are drawn oldest first. Not partial on remaining, so draws are HOT updates (no new index entry).
CREATE INDEX buckets_packs ON buckets (org_id, id) WHERE kind = 'pack';

CREATE TABLE ledger_entries (
    id          bigserial,
    org_id      text NOT NULL,
    bucket_id   bigint,  -- no FK: its check would share-lock the bucket row the debit just updated
    kind        text NOT NULL CHECK (kind IN ('grant', 'debit', 'expire', 'adjust', 'hold', 'release')),
    amount      bigint NOT NULL,
    ref         text NOT NULL,
    created_at  timestamptz NOT NULL,
    CHECK ((bucket_id IS NULL) = (kind IN ('hold', 'release'))),
    -- One btree serves uniqueness and an organization's entries in order; BRIN narrows time ranges.
    PRIMARY KEY (org_id, id)
);
CREATE INDEX ledger_entries_time ON ledger_entries USING brin (created_at);

CREATE TABLE usage_events (
    org_id        text NOT NULL,
    idem_key      text NOT NULL,
    source        text NOT NULL CHECK (source IN ('debit', 'hold')),
    action        text NOT NULL,
    tier          text,
    quantity      numeric NOT NULL CHECK (quantity > 0),
    country       text,
    user_id       text,
    cost          bigint NOT NULL CHECK (cost >= 0),
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);
-- BRIN, not btree: usage is appended in time order, and a range query ANDs it with the primary key's
-- org_id prefix. Nearly free to maintain on the debit path.
CREATE INDEX usage_events_time ON usage_events USING brin (created_at);

CREATE TABLE holds (
    org_id      text NOT NULL REFERENCES wallets (org_id),
    idem_key    text NOT NULL,
    action      text NOT NULL,
    tier        text,
    quantity    numeric NOT NULL CHECK (quantity > 0),
    country     text,
    user_id     text,
    cost        bigint NOT NULL CHECK (cost >= 0),
    status      text NOT NULL CHECK (status IN ('open', 'committed', 'released', 'expired')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    settled_at  timestamptz,
    PRIMARY KEY (org_id, idem_key)
);
CREATE INDEX holds_open ON holds (org_id, expires_at) WHERE status = 'open';

CREATE TABLE user_limits (
    org_id      text NOT NULL REFERENCES wallets (org_id),
    user_id     text NOT NULL,            -- '*' is the default for every user of the organization
    limit_milli bigint NOT NULL CHECK (limit_milli >= 0),
    PRIMARY KEY (org_id, user_id)
);

CREATE TABLE user_usage (
    org_id       text NOT NULL,
    user_id      text NOT NULL,
    period_start timestamptz NOT NULL,
    consumed     bigint NOT NULL CHECK (consumed >= 0),
    PRIMARY KEY (org_id, user_id, period_start)
);

CREATE TABLE usage_guards (
    org_id          text NOT NULL REFERENCES wallets (org_id),
    action          text NOT NULL,
    max_uses        integer NOT NULL CHECK (max_uses > 0),
    window_seconds  integer NOT NULL CHECK (window_seconds > 0),
    window_start    timestamptz,           -- fixed windows: uses counted since window_start
    uses            integer NOT NULL DEFAULT 0,
    paused_at       timestamptz,
    PRIMARY KEY (org_id, action)
);

-- Alerts are recorded once per (org, kind, period_key) by the debit transaction; the email work sends
-- them and stamps sent_at.
CREATE TABLE alerts (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('plan_80', 'plan_100', 'low_balance', 'usage_guard_paused')),
    period_key  text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    sent_at     timestamptz,
    UNIQUE (org_id, kind, period_key)
);
CREATE INDEX alerts_unsent ON alerts (id) WHERE sent_at IS NULL;

-- Idempotency of the cold-path operations (start_period, grants): business key -> request.
CREATE TABLE wallet_ops (
    org_id      text NOT NULL,
    op_key      text NOT NULL,
    request     text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (org_id, op_key)
);

-- ledger_debit_locked's result: the wallet as changed, the debit's result, and whether to save the wallet.
CREATE TYPE ledger_step AS (w wallets, status text, cost bigint, available bigint, replayed boolean,
                            detail_a bigint, detail_b bigint, dirty boolean);
