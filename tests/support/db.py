"""Reading the test database directly, on a connection of its own (what the code under test wrote)."""

from __future__ import annotations

from typing import Any

import psycopg


async def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()
