"""Business keys as the tests spell them, independently of models/keys.py (an oracle, not a copy)."""

from __future__ import annotations

from datetime import datetime


def stamp(t: datetime | None) -> str:
    assert t is not None
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
