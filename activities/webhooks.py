"""Webhook delivery as a Temporal activity, over webhooks/delivery.py: a regular activity (not local), so each
attempt and its error show in the UI, retried with exponential backoff by the workflow's retry policy."""

from __future__ import annotations

from temporalio import activity

from models.webhook_types import DELIVER_ACTIVITY, DeliverWebhooks, DeliveryResult
from webhooks.delivery import WebhookDeliveries


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
