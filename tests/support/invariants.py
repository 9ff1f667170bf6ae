"""The ledger's and billing's invariants of every commit (stated in the migration scripts), checked against the
database after every test (tests/conftest.py) and by the benches. The queries live in audit.py, their one
place: `billing audit` runs them too, with the checks that need more than one commit's view."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from audit import INVARIANTS


async def violations(conn: AsyncConnection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every invariant of every commit (`INVARIANTS`) with the rows that break it; empty when all hold."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for name, sql in INVARIANTS.items():
        cur = await conn.execute(sql)
        rows = await cur.fetchall()
        if rows:
            found[name] = rows
    return found


__all__ = ["INVARIANTS", "violations"]
