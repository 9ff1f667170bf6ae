"""Waiting for a workflow to show an incident (search attribute BillingIncident), for tests that provoke one."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from workflows.common import INCIDENT


async def incident_of(client: Client, workflow_id: str, step: str, *, polls: int = 500) -> None:
    """Wait until the workflow shows the incident `step`."""
    handle = client.get_workflow_handle(workflow_id)
    for _ in range(polls):
        try:
            if (await handle.describe()).typed_search_attributes.get(INCIDENT) == step:
                return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # not started yet
                raise
        await asyncio.sleep(0.05)
    raise AssertionError(f"{workflow_id} never showed the incident {step!r}")
