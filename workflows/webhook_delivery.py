"""One webhook endpoint's deliveries, as a workflow (id `webhook:{endpoint_id}`, task queue
`{task_queue}-webhooks`): started, or poked, by the dispatcher (webhooks/dispatcher.py) when the endpoint has
events to receive; it calls the delivery activity until the endpoint has them all, then ends.

The activity delivers in seq order and fails on the first event the endpoint does not acknowledge; its retry
policy backs off exponentially to an hour, for as long as it takes (every attempt shows in the UI), until
the endpoint answers again or has failed for so long that the activity disables it. Deterministic: no I/O.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models.webhook_types import DELIVER_ACTIVITY, DeliverWebhooks, DeliveryResult, DeliveryRun

# No maximum of attempts: an endpoint is retried until it answers or the activity disables it (failing for
# longer than BILLING_WEBHOOK_DISABLE_AFTER_HOURS).
DELIVERY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=10), backoff_coefficient=2.0,
                             maximum_interval=timedelta(hours=1))
CALL_TIMEOUT = timedelta(minutes=5)        # a call stops taking events after 60 s; each POST times out in 10 s
HEARTBEAT_TIMEOUT = timedelta(seconds=30)  # a worker lost mid-call: the call is retried elsewhere after this
CALLS_PER_RUN = 100                        # then continue as new: history stays bounded


@workflow.defn(name="WebhookDelivery")
class WebhookDeliveryWorkflow:
    @workflow.init
    def __init__(self, run: DeliveryRun) -> None:
        self.poked = False

    @workflow.signal
    def poke(self) -> None:
        """New events for this endpoint (the dispatcher): look again once the current call is done."""
        self.poked = True

    @workflow.run
    async def run(self, run: DeliveryRun) -> str:
        delivered = 0
        for _ in range(CALLS_PER_RUN):
            self.poked = False
            result: DeliveryResult = await workflow.execute_activity(
                DELIVER_ACTIVITY, DeliverWebhooks(run.endpoint_id), result_type=DeliveryResult,
                start_to_close_timeout=CALL_TIMEOUT, heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=DELIVERY_RETRY,
                summary=f"Deliver events to webhook endpoint {run.endpoint_id}")
            delivered += result.delivered
            workflow.set_current_details(f"endpoint {run.endpoint_id}: {delivered} events delivered by this run")
            if result.stopped is not None:
                workflow.set_current_details(f"endpoint {run.endpoint_id}: stopped ({result.stopped}) after "
                                             f"{delivered} events")
                return f"stopped: {result.stopped}"
            if not (result.more or self.poked):
                return f"caught up: {delivered} delivered"
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(run)
