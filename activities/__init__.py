"""Side effects: the PostgreSQL ledger, Stripe, email. Each idempotent by a business key."""
