"""Quotas per plan (models/quota_types.py): counted per period of the wallet, once per idempotency key."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ledger.gateway import Ledger
from models.quota_types import QuotaResult, QuotaUsage


class Quotas:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def record(self, org_id: str, quota: str, *, quantity: int | Decimal = 1, idempotency_key: str,
                     now: datetime | None = None) -> QuotaResult:
        raise NotImplementedError

    async def usage(self, org_id: str, *, now: datetime | None = None) -> list[QuotaUsage]:
        raise NotImplementedError
