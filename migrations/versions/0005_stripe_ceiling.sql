-- Failure model rule 10 (docs/product.md): renewal storms respect a configured ceiling of Stripe requests
-- per second across all workers (BILLING_STRIPE_MAX_RPS, payments/ceiling.py). Every worker shares this
-- database, so the count lives here: one row per ceiling, the current one-second window of the database
-- server's clock and the requests granted in it. A new window overwrites the row (ledger/sql/
-- stripe_ceiling_take.sql), so the table holds one row per ceiling however many seconds pass: nothing to
-- expire or vacuum away. Invariant (enforced by the check below):
--   C1 a ceiling's row counts at least the one request that opened its window
CREATE TABLE stripe_ceiling (
    key           text PRIMARY KEY,                  -- which ceiling ('stripe': the engine's Stripe account)
    window_start  bigint NOT NULL,                   -- the window: a whole second, epoch, of the database clock
    used          integer NOT NULL CHECK (used > 0)  -- requests granted in it
);
