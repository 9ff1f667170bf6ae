-- Auto-recharge (docs/product.md). Invariants (asserted by tests/support/invariants.py after every test):
--   R1 wallets.recharge_threshold is auto_recharge.threshold while auto-recharge is enabled, else NULL
--   R2 an auto-recharge grant (bucket grant_key = its payment key) exists iff that payment succeeded,
--      for the credits the payment bought
-- The debit (and the hold) decides the threshold crossing in its own statement (ledger/sql/ledger_recharge_due.sql):
-- wallets.recharge_threshold is the only setting it reads, and wallets.recharge_resume_at is the lease that
-- collapses concurrent triggers (a recharge is under way, or the spending limit blocks it, until then).

ALTER TABLE wallets
    ADD COLUMN recharge_threshold bigint CHECK (recharge_threshold >= 0),
    ADD COLUMN recharge_resume_at timestamptz;

CREATE TABLE auto_recharge (
    org_id                text PRIMARY KEY REFERENCES wallets (org_id),
    enabled               boolean NOT NULL,
    threshold             bigint NOT NULL CHECK (threshold >= 0),
    pack                  text NOT NULL,
    spending_limit_cents  bigint NOT NULL CHECK (spending_limit_cents > 0),
    disabled_reason       text,           -- why the engine turned it off (payment_failed); NULL otherwise
    version               bigint NOT NULL DEFAULT 1,  -- +1 per change: a round decided on old settings yields
    updated_at            timestamptz NOT NULL
);
CREATE INDEX payments_auto_recharge ON payments (org_id, created_at) WHERE purpose = 'auto_recharge';

-- The debit's and the hold's results gain `recharge`: true when the operation took the recharge lease.
ALTER TYPE ledger_step ADD ATTRIBUTE recharge boolean;
