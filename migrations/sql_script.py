"""How a revision runs its .sql script: as-is, through the raw driver cursor, so the SQL (with '%' and
'::') reaches the server untouched, with no parameter parsing; and what its downgrade drops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import op

from ledger.migrate import drop_repeatables


def run_sql_script(path: Path) -> None:
    driver = op.get_bind().connection.dbapi_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        cur.execute(path.read_text())
    finally:
        cur.close()


def sql_revision(revision_file: str, *downgrade_sql: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A revision's `upgrade` (run the .sql file beside it) and `downgrade` (drop the ledger's functions,
    which are written for the head revision, then run `downgrade_sql` in order)."""
    script = Path(revision_file).with_suffix(".sql")

    def upgrade() -> None:
        run_sql_script(script)

    def downgrade() -> None:
        for statement in (*drop_repeatables(), *downgrade_sql):
            op.execute(statement)

    return upgrade, downgrade
