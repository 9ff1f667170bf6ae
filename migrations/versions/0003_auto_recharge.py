"""Auto-recharge: its settings, the wallet's threshold and lease, and the debit functions that decide the
threshold crossing in their own statement (see 0003_auto_recharge.sql).

Revision ID: 0003
Revises: 0002
"""

from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SQL = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    driver = op.get_bind().connection.dbapi_connection  # raw cursor: PL/pgSQL bodies reach the server as-is
    assert driver is not None
    with driver.cursor() as cur:
        cur.execute(_SQL.read_text())


def downgrade() -> None:
    # The debit functions keep the `recharge` result column; 0001's versions would need re-creating.
    op.execute("DROP TABLE IF EXISTS auto_recharge")
    op.execute("DROP INDEX IF EXISTS payments_auto_recharge")
