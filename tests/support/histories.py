"""Every run of an organization's subscription workflow, oldest first (following continue-as-new back)."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from models.keys import subscription_workflow_id as workflow_id


async def run_histories(client: Client, org_id: str) -> list[WorkflowHistory]:
    histories: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id(org_id), run_id=run_id).fetch_history()
        histories.append(history)
        first = history.events[0]
        assert first.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        previous = first.workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            return histories[::-1]
        run_id = previous
