"""What every reliability test shares: it ends with `await assert_books_balance(kit)`, the audit (audit.py) of
the books of the kit's whole database.

The session's database is shared with the suites of the layers below (tests/ledger, tests/payments, ...), which
write part of the books on purpose: charges without a workflow, so without grant or receipt; wallets on a paid
plan opened by hand; packs granted without payment. And each test module runs on a kit of its own (a Temporal
server of its own): the subscriptions of an earlier module have no workflow in this one's. So the organizations
already in the database when a module starts are set aside (`books_set_aside`); every organization the module
makes is judged whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from audit import Finding
from testkit import TestKit

# The tables an audit finding names an organization from (and those of its profile and emails).
_ORG_TABLES = ("wallets", "buckets", "ledger_entries", "usage_events", "holds", "wallet_ops", "payments", "invoices",
               "outbox", "billing_profiles")
_set_aside: frozenset[str] = frozenset()


@pytest.fixture(scope="module", autouse=True)
async def books_set_aside(database_url: str) -> AsyncIterator[frozenset[str]]:
    """The organizations in the session's database before the module's first test (module docstring)."""
    global _set_aside
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(" UNION ".join(f"SELECT org_id FROM {table}" for table in _ORG_TABLES))
        _set_aside = frozenset(org for (org,) in await cur.fetchall())
    yield _set_aside
    _set_aside = frozenset()


def _lines(findings: list[Finding]) -> str:
    return "\n".join(f"  {f.check} {f.org_id or '-'}: {f.detail}" for f in findings)


async def assert_books_balance(kit: TestKit, *, allow_incidents: bool = True) -> None:
    """Settle the kit, then audit its books: raise AssertionError listing the broken findings (and the open
    incidents when `allow_incidents=False`; an open incident is no broken book)."""
    await kit.settle()
    report = await kit.audit(exclude_orgs=_set_aside)
    assert not report.skipped, f"audit checks skipped: {report.skipped}"
    broken = sum(c.broken for c in report.checks)
    incidents = sum(c.incidents for c in report.checks)
    problems = []
    if broken:
        problems.append(f"{broken} broken (listed: {len(report.broken)}):\n{_lines(report.broken)}")
    if incidents and not allow_incidents:
        problems.append(f"{incidents} open incidents (listed: {len(report.incidents)}):\n{_lines(report.incidents)}")
    if problems:
        raise AssertionError("the books do not balance: " + "\n".join(problems))
