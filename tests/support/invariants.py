"""The ledger's and billing's invariants of every commit (stated in the migration scripts), checked against the
database after every test (tests/conftest.py) and by the benches. The queries live in audit.py, their one
place: `billing audit` runs them too, with the checks that need more than one commit's view.

Q1 (migration 0012, quotas) is stated here until audit.py lists it with the others."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from audit import INVARIANTS as AUDIT_INVARIANTS

Q1 = ("Q1 quota_usage.used = sum(quantity) of the quota_events of its (org, quota, period_start)", """
    SELECT coalesce(u.org_id, e.org_id) AS org_id, coalesce(u.quota, e.quota) AS quota,
           coalesce(u.period_start, e.period_start) AS period_start, u.used, e.total
    FROM quota_usage u
    FULL JOIN (SELECT org_id, quota, period_start, sum(quantity) AS total FROM quota_events
               GROUP BY org_id, quota, period_start) e
        ON e.org_id = u.org_id AND e.quota = u.quota AND e.period_start = u.period_start
    WHERE u.org_id IS NULL OR e.org_id IS NULL OR u.used <> e.total""")

INVARIANTS: dict[str, str] = {**AUDIT_INVARIANTS, Q1[0]: Q1[1]}


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
