"""Alembic migrations: a package, so ledger/migrate.py finds them (Path(migrations.__file__)) wherever installed."""
