"""The main command (`python3 tasks.py run` runs worker.py) starts the whole embedded stack, migrates,
runs the worker, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from settings import ROOT
from stack.mail import free_port

UNSET = ("DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_KEY", "SMTP_URL", "BILLING_DEV_MODE",
         "BILLING_PAYLOAD_KEYS")


def _env_without_parts(data_dir: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET} | {"BILLING_DATA_DIR": str(data_dir)}


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def test_the_main_command_runs_on_embedded_defaults_serves_metrics_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # Development mode, as `python3 tasks.py run` asks for it; the operator's CLI alongside it.
    metrics, api = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = _env_without_parts(tmp_path) | {"BILLING_DEV_MODE": "1", "BILLING_METRICS_ADDRESS": metrics,
                                          "BILLING_API_ADDRESS": api}
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[str] = []
    ready = threading.Event()

    def read() -> None:  # keeps the pipe drained while the worker logs
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "Ctrl-C stops the worker" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), "".join(out)[-3000:]
        assert (tmp_path / "postgres").is_dir() and (tmp_path / "temporal.db").exists()
        assert "temporal_" in _scrape(metrics) and "billing_charges" in _scrape(metrics)  # the SDK's and ours
        # The operator's tour of the README: a trial, a test card, a pack bought (a charge).
        for command in (["subscribe", "acme", "--plan", "pro", "--email", "ops@acme.test", "--trial-days", "14"],
                        ["card", "acme", "ok"], ["buy", "acme", "500", "--key", "order-17"]):
            cli = subprocess.run([sys.executable, str(ROOT / "cli.py"), *command], cwd=tmp_path, env=env, text=True,
                                 capture_output=True, timeout=120)
            assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "invoice INV-" in cli.stdout, cli.stdout
        charged = [line for line in _scrape(metrics).splitlines() if line.startswith("billing_charges{")
                   and 'outcome="succeeded"' in line and 'purpose="pack"' in line]
        assert len(charged) == 1 and charged[0].endswith(" 1"), _scrape(metrics)
        # The HTTP API, with the platform key the command printed (and kept for the next start).
        printed = "".join(out)
        assert f"HTTP API: http://{api}/v1" in printed, printed[-3000:]
        secret = (tmp_path / "platform-key").read_text().strip()
        assert f"platform API key (kept in {tmp_path / 'platform-key'}): {secret}" in printed, printed[-3000:]
        balance = urllib.request.Request(f"http://{api}/v1/orgs/acme/balance",
                                         headers={"Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(balance, timeout=10) as answer:
            assert json.loads(answer.read())["plan_name"] == "pro"
        # The adapters' log lines name the workflow they work for.
        assert "[workflow=pack:acme:order-17 activity=stripe.charge]" in "".join(out), "".join(out)[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
    assert proc.returncode == 0, "".join(out)[-3000:]


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
