"""The ledger's and billing's invariants of every commit (stated in the migration scripts), checked against the
database after every test (tests/conftest.py) and by the benches. The queries live in audit.py, their one
place: `billing audit` runs them too, with the checks that need more than one commit's view."""

from __future__ import annotations

from audit import INVARIANTS, violations

__all__ = ["INVARIANTS", "violations"]
