"""Start (or poke) the delivery workflow of every endpoint that has events to receive.

One query finds them: per live endpoint, the last matching event after its cursor (an index range per event
type, events_type (type, seq)). An endpoint is signalled-with-start (workflow `webhook:{id}`, signal `poke`)
when it has events beyond those it was last signalled for; while its workflow works through them (or backs
off on a failing endpoint, for days) it is not signalled again, so its history does not grow with each
poll. Past `recheck`, an endpoint still behind is looked at again: started if its workflow is not running
(terminated by an operator, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from ledger.pool import LeanPool
from models.webhook_types import DeliveryRun, delivery_workflow_id, webhook_task_queue
from workflows.webhook_delivery import WebhookDeliveryWorkflow

log = logging.getLogger(__name__)

_DUE = """
SELECT e.id, m.top FROM webhook_endpoints e
CROSS JOIN LATERAL (
    SELECT max(v.seq) AS top FROM events v
    WHERE v.seq > e.delivered_seq AND v.type = ANY(e.event_types) AND (e.org_id IS NULL OR v.org_id = e.org_id)
) m
WHERE e.enabled AND e.deleted_at IS NULL AND m.top IS NOT NULL
ORDER BY e.id
"""


class WebhookDispatcher:
    def __init__(self, pool: LeanPool, client: Client, task_queue: str, *,
                 recheck: timedelta = timedelta(minutes=1)) -> None:
        self.pool = pool
        self.client = client
        self.task_queue = webhook_task_queue(task_queue)
        self.recheck = recheck.total_seconds()
        self._signalled: dict[str, tuple[int, float]] = {}  # endpoint -> (last seq signalled for, when)

    async def due(self) -> list[tuple[str, int]]:
        """(endpoint id, last matching seq) of every live endpoint with events after its cursor."""
        return [(str(r[0]), int(r[1])) for r in await self.pool.fetchall(_DUE, ())]

    async def dispatch(self, *, force: bool = False) -> list[str]:
        """Signal-with-start the delivery workflow of each endpoint with new events (every endpoint behind,
        with `force`); returns the endpoints signalled."""
        due = await self.due()
        now = time.monotonic()
        self._signalled = {k: v for k, v in self._signalled.items() if k in dict(due)}  # bounded: the live ones
        signalled = []
        for endpoint_id, top in due:
            last = self._signalled.get(endpoint_id)
            if last is not None and last[0] >= top and not force:
                if now - last[1] < self.recheck:
                    continue
                if await self._running(endpoint_id):
                    self._signalled[endpoint_id] = (top, now)
                    continue
            await self._poke(endpoint_id)
            self._signalled[endpoint_id] = (top, now)
            signalled.append(endpoint_id)
        return signalled

    async def _poke(self, endpoint_id: str) -> None:
        await self.client.start_workflow(
            WebhookDeliveryWorkflow.run, DeliveryRun(endpoint_id), id=delivery_workflow_id(endpoint_id),
            task_queue=self.task_queue, start_signal="poke",
            static_summary=f"Webhook deliveries to endpoint {endpoint_id}")

    async def _running(self, endpoint_id: str) -> bool:
        try:
            described = await self.client.get_workflow_handle(delivery_workflow_id(endpoint_id)).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return described.status == WorkflowExecutionStatus.RUNNING

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Dispatch every `interval` seconds until `stop` is set; a failed poll is logged and tried again."""
        while not stop.is_set():
            try:
                started = await self.dispatch()
                if started:
                    log.info("webhook deliveries started or poked: %d endpoints", len(started))
            except Exception:
                log.exception("webhook dispatcher: poll failed, retrying in %.1fs", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
