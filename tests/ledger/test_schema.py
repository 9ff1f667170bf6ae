"""models/tables.py is the true map of what the migrations create."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from ledger.migrate import sqlalchemy_url
from models.tables import metadata


def _mapped(name: str | None, type_: str, parent_names: object) -> bool:
    # schema_repeatables is ledger/migrate.py's bookkeeping (as alembic_version is Alembic's), not the model's.
    return not (type_ == "table" and name == "schema_repeatables")


def test_tables_match_the_migrated_schema(database_url: str) -> None:
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_name": _mapped}), metadata)
    # Indexes and server defaults live in the migration only; columns, types, keys must agree.
    relevant = [d for d in diff if not (isinstance(d, tuple) and d[0] in {"add_index", "remove_index"})]
    assert relevant == []
