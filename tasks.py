#!/usr/bin/env python3
"""Bootstrap and run: needs only Python >= 3.11. Creates .venv from requirements.lock on first use.

    python3 tasks.py run      # the main job: embedded stack, migrated, worker running
    python3 tasks.py test     # the test suite
    python3 tasks.py lint     # ruff + mypy
    python3 tasks.py bench    # bench/ledger.py
    python3 tasks.py bench-lifecycle    # bench/lifecycle.py
    python3 tasks.py bench-http    # bench/http.py
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".lock-sha256"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script is the one place that may run on an old Python
        sys.exit(f"Python >= 3.11 is needed, this is {sys.version.split()[0]}")
    digest = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing requirements.lock ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(LOCK)], check=True)
    # The project itself, editable, so .venv/bin/billing runs this checkout (its dependencies came above).
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-e", str(ROOT)], check=True)
    STAMP.write_text(digest)


COMMANDS: dict[str, list[str]] = {
    "run": ["worker.py"],
    "test": ["-m", "pytest"],
    "bench": ["-m", "bench.ledger"],
    "bench-lifecycle": ["bench/lifecycle.py"],
    "bench-http": ["-m", "bench.http"],
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {*COMMANDS, "lint", "venv"}:
        print(__doc__)
        return 2
    ensure_venv()
    cmd, extra = sys.argv[1], sys.argv[2:]
    os.chdir(ROOT)
    if cmd == "venv":
        return 0
    if cmd == "lint":
        bin_dir = PY.parent
        rc = subprocess.run([str(bin_dir / "ruff"), "check", "."]).returncode
        return rc or subprocess.run([str(bin_dir / "mypy"), "."]).returncode
    env = dict(os.environ)
    if cmd == "run":  # the main command asks for development mode: the embedded stack fills unset parts
        env["BILLING_DEV_MODE"] = "1"
    child = subprocess.Popen([str(PY), *COMMANDS[cmd], *extra], env=env)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            # Wait for the child to shut down gracefully (the worker stops its embedded services); pass the
            # interrupt on in case it reached this process alone. (subprocess.run would kill it at once.)
            child.send_signal(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
