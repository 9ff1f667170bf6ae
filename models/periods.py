"""Billing periods: anniversary-based, the same day of month as the anchor, clamped to the month's end
(Jan 31 -> Feb 28/29 -> Mar 31). Period n is always computed from the anchor, never from the previous
period's end, so a short month does not pull later periods forward."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

from models.billing_types import Interval

MONTHS = {"month": 1, "year": 12}


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole months, the day clamped to the target month's last day."""
    if anchor.tzinfo is None:
        raise ValueError("periods use timezone-aware datetimes")
    total = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(total, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def period_bounds(anchor: datetime, interval: Interval, index: int) -> tuple[datetime, datetime]:
    """The start and end of billing period `index` (0 = the first) of a subscription anchored at `anchor`."""
    if index < 0:
        raise ValueError(f"period index must be >= 0, got {index}")
    step = MONTHS[interval]
    return add_months(anchor, step * index), add_months(anchor, step * (index + 1))


def credit_month_bounds(anchor: datetime, month_index: int) -> tuple[datetime, datetime]:
    """Credits are granted month by month whatever the interval: month `month_index` since the anchor."""
    return period_bounds(anchor, "month", month_index)


def remaining_fraction(start: datetime, end: datetime, at: datetime) -> tuple[int, int]:
    """(seconds left, seconds in the period) at `at`, clamped to the period: the proration fraction."""
    total = int((end - start) / timedelta(seconds=1))
    left = int((end - max(min(at, end), start)) / timedelta(seconds=1))
    if total <= 0:
        raise ValueError("a period must end after it starts")
    return left, total
