"""Wallet terms (overage allowed, its cap, an open-hold limit) and overage: its entries, its sum on the wallet, the
part of a hold reserved in overage, and the closes that take it to an invoice (see 0009_overage.sql).

Revision ID: 0009
Revises: 0008
"""

from migrations.sql_script import sql_revision

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TABLE IF EXISTS overage_closes",
    "DELETE FROM ledger_entries WHERE kind IN ('overage', 'overage_closed')",
    "ALTER TABLE ledger_entries DROP CONSTRAINT IF EXISTS ledger_entries_kind_check, "
    "DROP CONSTRAINT IF EXISTS ledger_entries_check, "
    "ADD CONSTRAINT ledger_entries_kind_check "
    "CHECK (kind IN ('grant', 'debit', 'expire', 'adjust', 'hold', 'release')), "
    "ADD CONSTRAINT ledger_entries_check CHECK ((bucket_id IS NULL) = (kind IN ('hold', 'release')))",
    "ALTER TABLE holds DROP COLUMN IF EXISTS overage",
    "ALTER TABLE wallets DROP COLUMN IF EXISTS overage_allowed, DROP COLUMN IF EXISTS overage_cap, "
    "DROP COLUMN IF EXISTS concurrency_limit, DROP COLUMN IF EXISTS overage, DROP COLUMN IF EXISTS overage_held",
)
