"""Webhooks as Temporal activities.

Delivery, over webhooks/delivery.py: a regular activity (not local), so each attempt and its error show in
the UI, retried with exponential backoff by the workflow's retry policy; it runs on the deliveries' worker.

An incident's event, over webhooks/events.py: a local activity of the billing workflows (their worker
registers it, worker.build_worker), one short write keyed by the incident, as the ledger's writes are."""

from __future__ import annotations

from temporalio import activity

from activities.errors import typed_errors
from ledger.pool import LeanPool
from models.webhook_types import DELIVER_ACTIVITY, DeliverWebhooks, DeliveryResult, IncidentChange
from webhooks.delivery import WebhookDeliveries
from webhooks.events import record_incident_event
from workflows.activity_defs import INCIDENT_EVENT


class WebhookActivities:
    def __init__(self, deliveries: WebhookDeliveries) -> None:
        self.deliveries = deliveries

    @activity.defn(name=DELIVER_ACTIVITY)
    async def deliver(self, req: DeliverWebhooks) -> DeliveryResult:
        # Business time is the attempt's start by Temporal's clock (the test kit's skipped one in tests), so
        # "failing for 3 days" counts the same days as the retries' backoff.
        return await self.deliveries.deliver(req.endpoint_id, activity.info().started_time, activity.heartbeat)

    def all(self) -> list[object]:
        return [self.deliver]


class IncidentActivities:
    """The event of an incident opened or resolved (workflows/common.py `incident_opened`/`incident_resolved`)."""

    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool

    @activity.defn(name=INCIDENT_EVENT.name)
    @typed_errors
    async def record(self, change: IncidentChange) -> str:
        async with self.pool.connection() as conn:
            return await record_incident_event(conn, change)

    def all(self) -> list[object]:
        return [self.record]
