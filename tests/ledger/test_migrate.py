"""ledger/migrate.py: the migrations plus the repeatable ledger/sql/ files, under an advisory lock.

Each test works on databases of its own, created on the session's server and dropped afterwards."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from alembic import command
from psycopg import sql

from ledger.migrate import LOCK_KEY, SQL_DIR, alembic_config, migrate

LANDED = Path(__file__).parent / "fixtures" / "landed_0003.sql"

# Everything the schema is made of, in schema public, as comparable text.
_SNAPSHOT = {
    "relations": """
        SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'c')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, contypid::regtype::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2, 3""",
    "indexes": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "types": """
        SELECT typname, typtype, typrelid <> 0 FROM pg_type
        WHERE typnamespace = 'public'::regnamespace AND typcategory <> 'A' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT oid::regprocedure::text, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace AND prokind IN ('f', 'p') ORDER BY 1""",
}
_names = itertools.count(1)


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {part: conn.execute(query).fetchall() for part, query in _SNAPSHOT.items()}


def applied(url: str) -> dict[str, datetime]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT name, applied_at FROM schema_repeatables").fetchall())


@pytest.fixture(scope="module")
def new_database(database_url: str) -> Iterator[Callable[[], str]]:
    """Create empty databases on the session's server; returns their URLs. Dropped at the end."""
    created: list[str] = []

    def make() -> str:
        name = f"migrate_test_{next(_names)}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return urlsplit(database_url)._replace(path=f"/{name}").geturl()

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def fresh(new_database: Callable[[], str]) -> dict[str, list[tuple[Any, ...]]]:
    """The schema of a new database after one migrate()."""
    url = new_database()
    migrate(url)
    return snapshot(url)


def test_a_database_upgraded_from_the_landed_0003_equals_a_fresh_one(
    new_database: Callable[[], str], fresh: dict[str, list[tuple[Any, ...]]]
) -> None:
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LANDED.read_bytes())  # no parameters: run as is, as Alembic ran the landed scripts
    command.stamp(alembic_config(url), "0003")
    landed = snapshot(url)
    assert landed["functions"] != fresh["functions"]  # the landed definitions, before migrate()

    migrate(url)
    upgraded = snapshot(url)
    for part in _SNAPSHOT:
        assert upgraded[part] == fresh[part], part
    assert applied(url).keys() == {p.name for p in SQL_DIR.glob("*.sql")}


def test_concurrent_runs_wait_for_each_other(
    new_database: Callable[[], str], fresh: dict[str, list[tuple[Any, ...]]]
) -> None:
    url = new_database()
    with psycopg.connect(url, autocommit=True) as holder, ThreadPoolExecutor(2) as pool:
        # Hold the lock, so both runs are seen waiting, then let them race for it.
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        runs = [pool.submit(migrate, url) for _ in range(2)]
        time.sleep(0.5)
        assert not any(run.done() for run in runs)
        assert holder.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        for run in runs:
            run.result(timeout=60)
    assert snapshot(url) == fresh


def test_down_to_base_and_up_again_equals_a_fresh_database(
    new_database: Callable[[], str], fresh: dict[str, list[tuple[Any, ...]]]
) -> None:
    url = new_database()
    migrate(url)
    command.downgrade(alembic_config(url), "base")
    left = snapshot(url)
    assert [name for name, _ in left["relations"] if not name.startswith("alembic_version")] == []
    assert left["functions"] == [] and left["types"] == [("alembic_version", "c", True)]
    migrate(url)
    assert snapshot(url) == fresh


def _function(name: str, result: str, value: str) -> str:
    return f"CREATE OR REPLACE FUNCTION {name}() RETURNS {result} LANGUAGE sql IMMUTABLE AS $$ SELECT {value} $$;\n"


def test_only_changed_files_are_applied_again(new_database: Callable[[], str], tmp_path: Path) -> None:
    url = new_database()
    (tmp_path / "t_one.sql").write_text(_function("t_one", "int", "1"))
    (tmp_path / "t_two.sql").write_text(_function("t_two", "int", "2"))
    migrate(url, sql_dir=tmp_path)
    first = applied(url)
    assert first.keys() == {"t_one.sql", "t_two.sql"}

    migrate(url, sql_dir=tmp_path)
    assert applied(url) == first  # nothing changed, nothing applied

    # A changed result type: CREATE OR REPLACE alone is refused, the file drops the old function first.
    (tmp_path / "t_two.sql").write_text("DROP FUNCTION IF EXISTS t_two();\n" + _function("t_two", "text", "'two'"))
    migrate(url, sql_dir=tmp_path)
    second = applied(url)
    assert second["t_one.sql"] == first["t_one.sql"]
    assert second["t_two.sql"] > first["t_two.sql"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT t_one(), t_two()").fetchone() == (1, "two")


def test_a_broken_file_applies_nothing(new_database: Callable[[], str], tmp_path: Path) -> None:
    url = new_database()
    (tmp_path / "t_one.sql").write_text(_function("t_one", "int", "1"))
    migrate(url, sql_dir=tmp_path)
    first = applied(url)

    # Bodies are not checked on creation (check_function_bodies = off); the validation after catches it
    # and the whole set rolls back, the good change with it.
    (tmp_path / "t_one.sql").write_text(_function("t_one", "int", "10"))
    (tmp_path / "t_three.sql").write_text(
        "CREATE OR REPLACE FUNCTION t_three() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1 END $$;\n"
    )
    with pytest.raises(psycopg.errors.SyntaxError):
        migrate(url, sql_dir=tmp_path)
    assert applied(url) == first
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT t_one(), to_regproc('t_three')").fetchone() == (1, None)


def test_a_failed_run_releases_the_lock(new_database: Callable[[], str], tmp_path: Path) -> None:
    url = new_database()
    (tmp_path / "t_bad.sql").write_text("CREATE FUNCTION t_bad( RETURNS int;\n")
    with pytest.raises(psycopg.errors.SyntaxError):
        migrate(url, sql_dir=tmp_path)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone() == (True,)
