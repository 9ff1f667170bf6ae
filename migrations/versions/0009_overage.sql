-- Wallet terms and overage (docs/ledger.md, "Overage"): what the ledger enforces of a contract. Invariants
-- (asserted by tests/support/invariants.py after every test, from audit.py):
--   I3 (restated) wallet.held + wallet.overage_held = -sum(amount) of its reservation entries (hold, release);
--      held = sum(cost - overage) of its open holds, overage_held = sum(overage) of its open holds
--   I6 (restated) a usage event's cost = -sum(amount) of its debit and overage entries
--   O1 wallet.overage = -sum(amount) of its overage and overage_closed entries
--   O2 an overage close (overage_closes) of credits > 0 has exactly one overage_closed entry under its key, for
--      those credits; one of 0 has none; every overage_closed entry has its close
-- Overage is credits used past the available balance: recorded as ledger entries of kind 'overage' (no bucket:
-- nothing is drawn, the organization owes them), summed on the wallet row (`overage`, a stored balance read in
-- O(1) like the others) and taken to an invoice, once per key, by ledger_close_overage, which writes an
-- 'overage_closed' entry for it and zeroes the sum.

ALTER TABLE wallets
    ADD COLUMN overage_allowed   boolean NOT NULL DEFAULT false,
    ADD COLUMN overage_cap       bigint CHECK (overage_cap >= 0),          -- NULL: no cap (with overage_allowed)
    ADD COLUMN concurrency_limit integer CHECK (concurrency_limit > 0),    -- NULL: the plan's max_holds
    ADD COLUMN overage           bigint NOT NULL DEFAULT 0 CHECK (overage >= 0),       -- recorded, not yet closed
    ADD COLUMN overage_held      bigint NOT NULL DEFAULT 0 CHECK (overage_held >= 0);  -- reserved by open holds

-- The part of a hold's cost reserved in overage (open), or recorded as overage (committed).
ALTER TABLE holds ADD COLUMN overage bigint NOT NULL DEFAULT 0 CHECK (overage >= 0 AND overage <= cost);

ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_kind_check,
    DROP CONSTRAINT ledger_entries_check,
    ADD CONSTRAINT ledger_entries_kind_check
        CHECK (kind IN ('grant', 'debit', 'expire', 'adjust', 'hold', 'release', 'overage', 'overage_closed')),
    ADD CONSTRAINT ledger_entries_check
        CHECK ((bucket_id IS NULL) = (kind IN ('hold', 'release', 'overage', 'overage_closed')));

-- One row per close: the key makes it once, `credits` is the figure every repeat answers.
CREATE TABLE overage_closes (
    org_id      text NOT NULL REFERENCES wallets (org_id),
    close_key   text NOT NULL,
    credits     bigint NOT NULL CHECK (credits >= 0),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (org_id, close_key)
);
