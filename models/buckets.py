"""Bucket order, the rule: which credits a debit draws, stated as a pure function.

The ledger executes this rule inside PostgreSQL (`ledger_draw` in ledger/sql/ledger_draw.sql)
so that a debit stays one round trip; tests/ledger/test_bucket_order.py drives the database and this model with
the same random operations and requires the same draws, entry for entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal


@dataclass(frozen=True)
class Bucket:
    key: str                             # the grant key
    kind: Literal["plan", "pack"]        # plan credits (period or free day) expire; packs never do
    remaining: int                       # milli-credits
    expires_at: datetime | None
    granted_seq: int                     # grant order, oldest first


def live(buckets: Iterable[Bucket], now: datetime) -> list[Bucket]:
    """Buckets that can be drawn now, in draw order: soonest expiry first, then never-expiring packs
    oldest first."""
    usable = [b for b in buckets if b.remaining > 0 and (b.expires_at is None or b.expires_at > now)]
    return sorted(usable, key=lambda b: (b.expires_at is None, b.expires_at or now, b.granted_seq))


def draw(buckets: Iterable[Bucket], amount: int, now: datetime) -> list[tuple[str, int]] | None:
    """The (bucket key, milli-credits) a debit of `amount` takes, or None when the live balance is short
    (refused whole: nothing is drawn)."""
    if amount <= 0:
        raise ValueError("a draw is positive")
    order = live(buckets, now)
    if sum(b.remaining for b in order) < amount:
        return None
    takes: list[tuple[str, int]] = []
    left = amount
    for b in order:
        take = min(b.remaining, left)
        takes.append((b.key, take))
        left -= take
        if left == 0:
            break
    return takes
