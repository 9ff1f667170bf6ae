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

UNSET = ("DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_KEY", "SMTP_URL", "BILLING_DEV_MODE")


def _env_without_parts(data_dir: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET} | {"BILLING_DATA_DIR": str(data_dir)}


def test_the_main_command_runs_on_embedded_defaults_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # Development mode, as `python3 tasks.py run` asks for it.
    env = _env_without_parts(tmp_path) | {"BILLING_DEV_MODE": "1"}
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


def test_outside_development_mode_a_worker_with_a_part_unset_starts_nothing(tmp_path: Path) -> None:
    env = _env_without_parts(tmp_path) | {"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    done = subprocess.run([sys.executable, str(ROOT / "worker.py")], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode != 0
    assert "not configured: TEMPORAL_ADDRESS, STRIPE_API_KEY, SMTP_URL" in done.stderr, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no embedded PostgreSQL, Temporal, fake Stripe or SMTP sink


def test_outside_development_mode_the_cli_refuses_an_unset_database(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "balance", "acme"], cwd=tmp_path,
                          env=_env_without_parts(tmp_path), text=True, capture_output=True, timeout=60)
    assert done.returncode == 2 and "DATABASE_URL is not set" in done.stdout, done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []
