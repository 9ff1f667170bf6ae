"""A spy on a ledger's real pool: the debit statements it ran (tests of the group commit and of what a batch
carries)."""

from __future__ import annotations

from typing import Any

from ledger import Ledger


class Statements:
    """The debit statements a ledger's pool ran (a spy on the real pool): how many debits each carried,
    and any that failed."""

    def __init__(self, ledger: Ledger) -> None:
        self.batches: list[list[str]] = []  # the organizations of each ledger_debit_batch, in its order
        self.singles = 0
        self.failed: list[BaseException] = []
        real = ledger.pool.fetchall

        async def spy(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            if "ledger_debit_batch" in sql:
                self.batches.append(list(params[0]))
            elif "ledger_debit(" in sql:
                self.singles += 1
            try:
                return await real(sql, params)
            except BaseException as exc:
                self.failed.append(exc)
                raise

        ledger.pool.fetchall = spy  # type: ignore[method-assign]
