"""tests/reliability/crash_worker.py (worker.py's own `main`, configured as in production, SIGKILLing itself at
an armed seam) with one seam more: `webhook`, right after the endpoint acknowledged event `key` (its 2xx) and
before the endpoint's cursor records it.

    CRASH_STRIPE_URL=... CRASH_SPEC=/tmp/x/crash.json python -m tests.webhooks.crash_worker
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

import worker
from models.webhook_types import Event
from tests.reliability import crash_worker
from webhooks.delivery import WebhookDeliveries


class CrashDeliveries(WebhookDeliveries):
    async def _delivered(self, conn: AsyncConnection[Any], endpoint_id: str, event: Event, now: datetime) -> None:
        crash_worker.crash_if_armed("webhook", event.id)
        await super()._delivered(conn, endpoint_id, event, now)


def main() -> None:
    if not hasattr(worker, "WebhookDeliveries"):  # worker.py changed: the seam would silently not apply
        sys.exit("crash_worker: worker.WebhookDeliveries is gone; update tests/webhooks/crash_worker.py")
    worker.WebhookDeliveries = CrashDeliveries
    crash_worker.main()


if __name__ == "__main__":
    main()
