"""The main command (`python3 tasks.py run` runs worker.py) starts the whole embedded stack, migrates,
runs the worker, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from settings import ROOT

UNSET = ("DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_KEY", "SMTP_URL")


def test_the_main_command_runs_on_embedded_defaults_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in UNSET} | {"BILLING_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Ctrl-C stops the worker" in line:
                break
        text = "".join(out)
        assert "billing engine: running" in text and "Ctrl-C stops the worker" in text, text[-3000:]
        assert (tmp_path / "postgres").is_dir() and (tmp_path / "temporal.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(out)[-2000:] + rest[-2000:]
