"""Fixtures of the email tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.mail import SmtpSink


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "mail") as s:
        yield s
