"""Run a migration's .sql script as-is: through the raw driver cursor, so the PL/pgSQL bodies (with '%'
and '::') reach the server untouched, with no parameter parsing."""

from __future__ import annotations

from pathlib import Path

from alembic import op


def run_sql_script(path: Path) -> None:
    driver = op.get_bind().connection.dbapi_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        cur.execute(path.read_text())
    finally:
        cur.close()
