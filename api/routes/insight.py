"""Usage insight (docs/api.md, DESIGN.md section 11): the per-event log, per-action summaries, series for graphs,
lifetime totals, streamed exports, the projected spend and a member's own usage.

Platform and admin keys read the whole organization. A member key reads only its own user's usage: the log, the
summary and the series are narrowed to its user (naming another user is 403), grouping the series by user is 403,
and lifetime totals, exports and the projection (the organization's) are 403."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from api.openapi import problems
from api.routes.common import MANAGE, OrgId, managing
from api.schemas import (
    LifetimeOut,
    MemberUsageOut,
    ProjectionAnswer,
    ProjectionOut,
    UsageEventOut,
    UsageEventsOut,
    UsageSeriesOut,
    UsageSummaryOut,
)
from api.service import Caller, Svc
from models.api_types import ApiKey
from models.errors import Forbidden
from models.insight_types import DEFAULT_LOG_LIMIT, ExportFormat, ExportWhat, SeriesBucket, SeriesBy
from models.tags import tag_pairs

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["usage"])

Since = Annotated[datetime | None, Query(description="from this time on (RFC 3339 with its offset)")]
Until = Annotated[datetime | None, Query(description="before this time (RFC 3339 with its offset)")]
UserFilter = Annotated[str | None, Query(description="one user's usage only (a member key: its own, or none)")]
TagFilter = Annotated[list[str] | None, Query(
    description="`name:value`, repeatable: events carrying every tag given", examples=["campaign:spring"])]
UserId = Annotated[str, Path(description="a user id", examples=["u1"])]

_MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
_EXPORT: dict[int | str, dict[str, Any]] = {200: {
    "description": "the rows, streamed: CSV with its header line, or one JSON object per line",
    "content": {media: {"schema": {"type": "string"}} for media in ("text/csv", "application/x-ndjson")}}}


def _own(key: ApiKey, user_id: str | None) -> str | None:
    """The user a read is narrowed to: a member key reads its own user only (naming another is Forbidden)."""
    if key.role != "member":
        return user_id
    if user_id is not None and user_id != key.user_id:
        raise Forbidden(f"a member key reads only its own user's usage ({key.user_id!r}), not {user_id!r}")
    return key.user_id


def _tags(filters: list[str] | None) -> dict[str, str] | None:
    """`tag=campaign:spring&tag=country:FR` as {"campaign": "spring", "country": "FR"} (the log checks the names
    and values by the tags' own rule, models/tags.py)."""
    return tag_pairs(filters, sep=":", what="a tag filter")


@router.get("/usage/events", response_model=UsageEventsOut, responses=problems(*MANAGE))
async def usage_events(org_id: OrgId, key: Caller, svc: Svc, action: str | None = None, tier: str | None = None,
                       user_id: UserFilter = None, tag: TagFilter = None, since: Since = None, until: Until = None,
                       limit: Annotated[int, Query(description="events per page, 1-1000")] = DEFAULT_LOG_LIMIT,
                       cursor: Annotated[str | None, Query(description="the previous page's next_cursor")] = None,
                       ) -> UsageEventsOut:
    """The usage events (debits and committed holds) over [since, until), newest first, filtered; a page at a
    time: follow `next_cursor` until it is null. A member key: its own user's events only."""
    key.reach(org_id)
    page = await svc.billing.usage_log(org_id, action=action, tier=tier, user_id=_own(key, user_id),
                                       tags=_tags(tag), since=since, until=until, limit=limit, cursor=cursor)
    return UsageEventsOut(org_id=org_id, events=[UsageEventOut.model_validate(e) for e in page.events],
                          next_cursor=page.next_cursor)


@router.get("/usage/summary", response_model=UsageSummaryOut, responses=problems(*MANAGE))
async def usage_summary(org_id: OrgId, key: Caller, svc: Svc, since: Since = None, until: Until = None,
                        user_id: UserFilter = None) -> UsageSummaryOut:
    """Per action over [since, until): uses, quantity, credits and credits per use, most credits first. A member
    key: its own user's."""
    key.reach(org_id)
    user_id = _own(key, user_id)
    rows = await svc.billing.usage_summary(org_id, since=since, until=until, user_id=user_id)
    return UsageSummaryOut.model_validate({"org_id": org_id, "since": since, "until": until, "user_id": user_id,
                                           "actions": rows}, from_attributes=True)


@router.get("/usage/series", response_model=UsageSeriesOut, responses=problems(*MANAGE))
async def usage_series(org_id: OrgId, key: Caller, svc: Svc, since: datetime, until: datetime,
                       bucket: SeriesBucket = "day", by: SeriesBy | None = None,
                       user_id: UserFilter = None) -> UsageSeriesOut:
    """Uses and credits per UTC day or hour over [since, until) (at most 1,000 buckets), per action or user if
    `by`: every bucket of every key seen, zeros included. A member key: its own user's, not by user."""
    key.reach(org_id)
    if key.role == "member" and by == "user":
        raise Forbidden("a member key reads only its own usage: by=action, or no grouping")
    user_id = _own(key, user_id)
    points = await svc.billing.usage_series(org_id, since=since, until=until, bucket=bucket, by=by, user_id=user_id)
    return UsageSeriesOut.model_validate({"org_id": org_id, "since": since, "until": until, "bucket": bucket,
                                          "by": by, "user_id": user_id, "points": points}, from_attributes=True)


@router.get("/usage/lifetime", response_model=LifetimeOut, responses=problems(*MANAGE))
async def usage_lifetime(org_id: OrgId, key: Caller, svc: Svc) -> LifetimeOut:
    """Credits added (plans, packs) and used since the organization's wallet was opened."""
    managing(key, org_id)
    return LifetimeOut.model_validate(await svc.billing.lifetime_totals(org_id))


def _filename(org_id: str, what: str, fmt: str) -> str:
    # An id may hold ':', '/' or '@', which no file name wants.
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', org_id)}-{what}.{fmt}"


@router.get("/usage/export", response_class=StreamingResponse, responses={**_EXPORT, **problems(*MANAGE)})
async def usage_export(org_id: OrgId, key: Caller, svc: Svc, what: ExportWhat = "usage",
                       fmt: Annotated[ExportFormat, Query(alias="format", description="csv or jsonl")] = "csv",
                       since: Since = None, until: Until = None) -> StreamingResponse:
    """The usage events (`what=usage`) or the ledger's entries (`what=transactions`) of [since, until), oldest
    first, streamed as CSV or JSON lines (an attachment). A refusal comes before the first byte, as a problem;
    rows then stream from the database in bounded memory."""
    managing(key, org_id)
    if what == "usage":
        chunks = await svc.billing.export_usage(org_id, fmt=fmt, since=since, until=until)
    else:
        chunks = await svc.billing.export_transactions(org_id, fmt=fmt, since=since, until=until)
    first = await _first(chunks)  # opens the export's connection and runs its query: still a problem if refused
    return StreamingResponse(_then(first, chunks), media_type=_MEDIA[fmt], headers={
        "Content-Disposition": f'attachment; filename="{_filename(org_id, what, fmt)}"'})


async def _first(chunks: AsyncIterator[bytes]) -> bytes:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return b""
    except BaseException:
        await _close(chunks)
        raise


async def _then(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`first`, then the rest; the export (its connection) closed however the response ends (a client gone)."""
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await _close(chunks)


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)  # an async generator's; a plain iterator has nothing to close
    if aclose is not None:
        await aclose()


@router.get("/usage/projection", response_model=ProjectionAnswer, responses=problems(*MANAGE))
async def usage_projection(org_id: OrgId, key: Caller, svc: Svc) -> ProjectionAnswer:
    """Where this period's use ends at its burn rate so far, against the allocation (`projection` null: the
    period has no end to project to)."""
    managing(key, org_id)
    found = await svc.billing.projection(org_id)
    return ProjectionAnswer(org_id=org_id, projection=None if found is None else ProjectionOut.model_validate(found))


@router.get("/users/{user_id}/usage", response_model=MemberUsageOut, responses=problems(*MANAGE))
async def member_usage(org_id: OrgId, user_id: UserId, key: Caller, svc: Svc) -> MemberUsageOut:
    """A user's usage this period, per action, with its limit and what remains of it. A member key reads its own
    user's only."""
    key.reach(org_id)
    _own(key, user_id)
    return MemberUsageOut.model_validate(await svc.billing.member_usage(org_id, user_id))
