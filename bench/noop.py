"""The lifecycle benchmark's baseline (bench/lifecycle.py): a workflow that runs one no-op activity and
completes. Its own module, so the workflow sandbox imports only this file for it."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bench.noop")
async def noop_activity() -> None:
    return None


@workflow.defn(name="BenchNoop")
class NoopWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("bench.noop", start_to_close_timeout=timedelta(seconds=60))
