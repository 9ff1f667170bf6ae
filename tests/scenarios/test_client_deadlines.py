"""Every client call that waits on Temporal answers within a deadline (failure model rule 5): a Temporal
server that cannot be reached, or a workflow no worker runs, is a typed ServiceUnavailable, not a hang."""

from __future__ import annotations

import dataclasses
import socket
from datetime import timedelta

import pytest

from models.errors import ServiceUnavailable
from stack.temporal import start_dev_server
from starter import BillingClient
from testkit import TestKit


def _refused_address() -> str:
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_an_unreachable_temporal_is_service_unavailable(kit: TestKit, org: str) -> None:
    settings = dataclasses.replace(kit.billing.settings, temporal_address=_refused_address())
    billing = BillingClient(kit.billing.ledger, settings, payments=kit.payments)
    with pytest.raises(ServiceUnavailable, match="Temporal cannot be reached"):
        await billing.subscribe(org, plan="pro", email="ops@acme.test")


async def test_a_call_no_worker_answers_is_service_unavailable_after_the_deadline(kit: TestKit, org: str) -> None:
    # A server of its own (a workflow no worker runs would hold the shared kit's clock: the time-skipping
    # server skips no time while a task is outstanding), and a task queue no worker polls.
    env = await start_dev_server(None, port=None, ui_port=None)
    try:
        settings = dataclasses.replace(kit.billing.settings, task_queue="nobody-polls-this")
        billing = BillingClient(kit.billing.ledger, settings, env.client, payments=kit.payments)
        billing.deadline = timedelta(seconds=2)
        with pytest.raises(ServiceUnavailable, match="no answer within"):
            await billing.subscribe(org, plan="pro", email="ops@acme.test")
    finally:
        await env.shutdown()
