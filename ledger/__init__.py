"""The ledger gateway: the synchronous metering path (one PL/pgSQL call per operation) over PostgreSQL,
and the SQL source of the ledger's functions (ledger/sql/)."""

from ledger.gateway import Ledger

__all__ = ["Ledger"]
