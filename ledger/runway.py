"""The runway alert (models/projection.py): opted in per organization, recorded once a period by the alert
poller."""

from __future__ import annotations

from datetime import datetime

from ledger.pool import LeanPool


async def set_runway_alert(pool: LeanPool, org_id: str, enabled: bool) -> None:
    raise NotImplementedError


async def runway_alert(pool: LeanPool, org_id: str) -> bool:
    raise NotImplementedError


async def record_runway_alerts(pool: LeanPool, now: datetime) -> int:
    raise NotImplementedError
