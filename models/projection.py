"""Projected spend: where the period's use ends at its burn rate so far, and when the runway alert is due.

Pure: the ledger reads the figures (Balance), the alert poller and the reads call these. A linear projection,
as cloro's and Orb's dashboards draw it: credits used so far in the period, divided by the time elapsed, times
the period's length. Early in a period one burst says little of the whole, so the runway alert waits until a
tenth of the period has passed (three days of a month, 2.4 hours of a free plan's day).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from models.credits import from_milli

RUNWAY_MIN_ELAPSED_FRACTION = Decimal("0.1")
RUNWAY_BEFORE_PERCENT = 80  # the runway alert says so before the 80% alert would: at or past 80% it is not sent
_US = timedelta(microseconds=1)
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Projection:
    period_start: datetime
    period_end: datetime
    as_of: datetime
    allocation: Decimal        # the period's plan allocation
    consumed: Decimal          # used this period so far
    burn_per_day: Decimal      # credits per day at this period's rate so far
    projected: Decimal         # used by the period's end at that rate
    runs_out_at: datetime | None  # when the allocation is (was) used up at that rate; None: not in this period
    exceeds: bool              # projected > allocation
    runway_alert_due: bool     # the runway alert's rule (runway_due)


def _div_half_up(num: int, den: int) -> int:
    return int((Decimal(num) / Decimal(den)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def project(*, allocation_milli: int, consumed_milli: int, period_start: datetime, period_end: datetime,
            as_of: datetime) -> Projection:
    """The projection of a period as of `as_of` (clamped into the period). Exact integer arithmetic in
    milli-credits and microseconds, rounded half-up once."""
    length = (period_end - period_start) // _US
    if length <= 0:
        raise ValueError(f"a period ends after it starts: {period_start} .. {period_end}")
    at = min(max(as_of, period_start), period_end)
    elapsed = (at - period_start) // _US
    if elapsed == 0:  # nothing elapsed: no rate to extend
        projected, burn_day = consumed_milli, 0
    else:
        projected = _div_half_up(consumed_milli * length, elapsed)
        burn_day = _div_half_up(consumed_milli * _DAY_US, elapsed)
    runs_out: datetime | None = None
    if elapsed and consumed_milli and projected > allocation_milli:
        # at this rate the allocation lasts allocation / rate from the period's start (in the past if used up)
        runs_out = period_start + timedelta(microseconds=elapsed * allocation_milli // consumed_milli)
    exceeds = projected > allocation_milli
    return Projection(period_start, period_end, at, from_milli(allocation_milli), from_milli(consumed_milli),
                      from_milli(burn_day), from_milli(projected), runs_out, exceeds,
                      runway_due(allocation_milli, consumed_milli, projected, elapsed, length))


def runway_due(allocation_milli: int, consumed_milli: int, projected_milli: int, elapsed_us: int,
               length_us: int) -> bool:
    """The runway alert: the projection runs past the allocation while use is still under 80% of it (the 80%
    alert has not fired), and at least a tenth of the period has passed."""
    return (allocation_milli > 0 and projected_milli > allocation_milli
            and consumed_milli * 100 < allocation_milli * RUNWAY_BEFORE_PERCENT
            and Decimal(elapsed_us) >= RUNWAY_MIN_ELAPSED_FRACTION * length_us)
