"""Bring a database to the current schema: Alembic's migrations, then the ledger's repeatable SQL objects.

`migrate(url)` is the one way to do it (`billing migrate`, the stack on start, the tests). Under a PostgreSQL
advisory lock, so concurrent runs (two workers starting at once) wait for each other, it

1. runs Alembic's `upgrade` (migrations/versions/: tables, types, indexes, data changes; versioned, run once);
2. applies the repeatable objects, as Flyway's repeatable migrations: every `ledger/sql/*.sql` file whose
   sha256 differs from the one recorded when it was last applied (in `schema_repeatables`, a bookkeeping
   table created here, as alembic_version is by Alembic) is run again, all of them in one transaction, in
   name order under `SET LOCAL check_function_bodies = off` (as pg_dump's output is restored), so a file may
   call functions defined by files after it. Then, still in that transaction, every function named after a
   file goes through its language's validator with the bodies checked: a syntax error rolls the whole set
   back instead of surfacing at the first call.

The repeatables are written for the head revision: they are applied only when the database is at head
(`migrate(url, "0002")` runs the migrations alone).

The files: one per function, named after it (`ledger_debit.sql` defines `ledger_debit`), holding its
current definition as `CREATE OR REPLACE FUNCTION`, plus what belongs to it (the trigger that calls it, as
`CREATE OR REPLACE TRIGGER`). To change a function, edit its file; it is re-applied on the next run.

A change that `CREATE OR REPLACE` refuses (different result type or OUT columns, renamed parameters), or a
change of the argument types (which would create a second overload), needs the old function dropped first:
start the file with `DROP FUNCTION IF EXISTS name(old argument types);` naming the OLD signature, then the
new `CREATE OR REPLACE FUNCTION`. The drop runs in the same transaction, so callers never see the function
missing; keep the line while a database with the old signature may exist (on a fresh database it does
nothing). If a trigger uses the function, drop with CASCADE and re-create the trigger in the same file.
To remove a function for good, drop it in a migration and delete its file (its `schema_repeatables` row
stays, unused).

`alembic upgrade head` by hand (alembic.ini) runs step 1 only.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

import migrations

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).parent / "sql"
# pg_advisory_lock key of migrate(): any fixed bigint no other code uses ("billmigr" in ASCII).
LOCK_KEY = 0x62696C6C6D696772

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_repeatables (
    name        text PRIMARY KEY,      -- file name under ledger/sql/
    checksum    text NOT NULL,         -- sha256 of the file's bytes when it was applied
    applied_at  timestamptz NOT NULL
)"""

# The language validator of every function named after a file: the bodies were not checked on creation.
_VALIDATORS = """
SELECT p.oid, vn.nspname, v.proname
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
JOIN pg_proc v ON v.oid = l.lanvalidator JOIN pg_namespace vn ON vn.oid = v.pronamespace
WHERE p.pronamespace = current_schema()::regnamespace AND p.proname = ANY (%s)"""


def sqlalchemy_url(libpq_url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if libpq_url.startswith(prefix):
            return "postgresql+psycopg://" + libpq_url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {libpq_url!r}")


def alembic_config(url: str) -> Config:
    """Alembic's configuration for `url`, built here (no alembic.ini): the migrations are found next to the
    `migrations` package, wherever it is installed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))  # configparser escaping
    return cfg


def migrate(url: str, revision: str = "head", *, sql_dir: Path = SQL_DIR) -> None:
    """Upgrade the database at `url` (a libpq URL) to `revision`, then apply the changed repeatables of
    `sql_dir` if that is the head. Blocking: call it through asyncio.to_thread from async code."""
    cfg = alembic_config(url)
    # The lock is a session lock on a connection of its own, held for the whole run: Alembic's connection
    # commits as it goes. Closing the connection releases it too, if anything below raises.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        command.upgrade(cfg, revision)
        heads = set(ScriptDirectory.from_config(cfg).get_heads())
        current = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
        if current == heads:
            applied = apply_repeatables(conn, sql_dir)
            if applied:
                log.info("applied %d repeatable SQL files: %s", len(applied), ", ".join(applied))
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def drop_repeatables() -> list[str]:
    """The statements a migration's downgrade runs (op.execute, one by one) to drop every function of
    ledger/sql/ (CASCADE: with its trigger) and forget they were applied. They are written for the head
    revision, so no downgrade keeps them; `migrate()` re-creates them once the database is at head again."""
    names = sorted(path.stem for path in SQL_DIR.glob("*.sql"))
    return [f"DROP FUNCTION IF EXISTS {', '.join(names)} CASCADE", "DROP TABLE IF EXISTS schema_repeatables"]


def apply_repeatables(conn: psycopg.Connection[Any], sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the files of `sql_dir` whose text changed since they were last applied, in one transaction;
    returns their names. The caller holds the migration lock."""
    files = {path.name: path.read_bytes() for path in sorted(sql_dir.glob("*.sql"))}
    with conn.transaction():
        conn.execute(_BOOKKEEPING)
        recorded = dict(conn.execute("SELECT name, checksum FROM schema_repeatables").fetchall())
        checksums = {name: hashlib.sha256(text).hexdigest() for name, text in files.items()}
        changed = [name for name in files if recorded.get(name) != checksums[name]]
        if not changed:
            return []
        conn.execute("SET LOCAL check_function_bodies = off")
        for name in changed:
            conn.execute(files[name])  # no parameters: sent as is, several statements allowed
            conn.execute(
                "INSERT INTO schema_repeatables (name, checksum, applied_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = EXCLUDED.applied_at",
                (name, checksums[name]),
            )
        conn.execute("SET LOCAL check_function_bodies = on")
        for oid, schema, validator in conn.execute(_VALIDATORS, ([Path(name).stem for name in files],)).fetchall():
            conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(schema, validator)), (oid,))
    return changed
