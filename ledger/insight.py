"""Usage insight: the per-event log, summaries, series, lifetime totals, exports, projection, member usage
(DESIGN.md section 11, docs/usage.md). Reads only, through the ledger's pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime

from ledger.gateway import Ledger
from models.insight_types import (
    DEFAULT_LOG_LIMIT,
    ActionSummary,
    ExportFormat,
    ExportWhat,
    LifetimeTotals,
    MemberUsage,
    SeriesBucket,
    SeriesBy,
    SeriesPoint,
    UsagePage,
)
from models.projection import Projection


class UsageInsight:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.pool = ledger.pool

    async def log(
        self, org_id: str, *, action: str | None = None, tier: str | None = None, user_id: str | None = None,
        tags: Mapping[str, str] | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LOG_LIMIT, cursor: str | None = None,
    ) -> UsagePage:
        raise NotImplementedError

    async def summary(
        self, org_id: str, *, since: datetime | None = None, until: datetime | None = None,
        user_id: str | None = None,
    ) -> list[ActionSummary]:
        raise NotImplementedError

    async def series(
        self, org_id: str, *, since: datetime, until: datetime, bucket: SeriesBucket = "day",
        by: SeriesBy | None = None, user_id: str | None = None,
    ) -> list[SeriesPoint]:
        raise NotImplementedError

    async def lifetime(self, org_id: str) -> LifetimeTotals:
        raise NotImplementedError

    async def export(
        self, org_id: str, *, what: ExportWhat, fmt: ExportFormat, since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def projection(self, org_id: str, *, now: datetime | None = None) -> Projection | None:
        raise NotImplementedError

    async def member_usage(self, org_id: str, user_id: str, *, now: datetime | None = None) -> MemberUsage:
        raise NotImplementedError
