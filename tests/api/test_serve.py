"""`billing serve` as an OS process of its own, configured as in production (DATABASE_URL, TEMPORAL_ADDRESS: the
kit's), and `billing keys` beside it: a key made by the CLI debits through the served API, is listed without its
secret, and once revoked is refused. Outside development mode, a Temporal left unset starts nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from decimal import Decimal

import httpx
from typer.testing import CliRunner

from cli import cli
from settings import ROOT
from stack.mail import free_port
from temporal_client import DEV_PAYLOAD_KEYS
from testkit import TASK_QUEUE, TestKit
from tests.api.conftest import problem

UNSET = ("DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_KEY", "SMTP_URL", "BILLING_DEV_MODE", "BILLING_PAYLOAD_KEYS",
         "BILLING_API_ADDRESS")


def _env(kit: TestKit) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET} | {
        "DATABASE_URL": kit.database_url, "TEMPORAL_ADDRESS": kit.env.client.service_client.config.target_host,
        "BILLING_TASK_QUEUE": TASK_QUEUE, "BILLING_PAYLOAD_KEYS": DEV_PAYLOAD_KEYS, "PYTHONUNBUFFERED": "1"}


async def _cli(env: dict[str, str], *args: str) -> str:
    """`billing *args` in this process (a thread: the command runs its own event loop) with `env`."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


async def test_billing_serve_debits_as_its_own_process(kit: TestKit, org: str) -> None:
    await kit.billing.open_wallet(org)
    env = _env(kit)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "cli.py"), "serve", "--port", str(port), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []
    try:
        assert server.stdout is not None
        while not any(line.startswith("HTTP API: ") for line in seen):
            line = await asyncio.wait_for(server.stdout.readline(), 120)
            assert line, "".join(seen)  # the process ended before it served
            seen.append(line.decode())
        assert f"http://127.0.0.1:{port}/v1" in seen[-1]

        created = await _cli(env, "keys", "create", "--role", "member", "--org", org, "--user", "u1", "--name", "cli")
        secret = created.split("secret (shown this once): ")[1].split()[0]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {secret}"}) as http:
            r = await http.post(f"/v1/orgs/{org}/debits", json={"action": "ai_chat", "tier": "fast", "quantity": 3},
                                headers={"Idempotency-Key": "served-1"})
            assert (r.status_code, r.json()["available"]) == (201, "47.000"), r.text
            key_id = (await http.get("/v1/whoami")).json()["key_id"]
        assert (await kit.billing.balance(org)).available == Decimal(47)

        listed = await _cli(env, "keys", "list", "--org", org)
        assert key_id in listed and secret not in listed and secret[:10] in listed
        await _cli(env, "keys", "revoke", key_id)
        async with httpx.AsyncClient(base_url=kit.api_url, headers={"Authorization": f"Bearer {secret}"}) as kit_http:
            problem(await kit_http.get(f"/v1/orgs/{org}/balance"), 401, "NotAuthenticated")
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(server.communicate(), 60)
    assert server.returncode == 0, "".join(seen) + rest.decode()


async def test_outside_development_mode_serve_refuses_an_unset_temporal(kit: TestKit) -> None:
    env = {k: v for k, v in _env(kit).items() if k != "TEMPORAL_ADDRESS"}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "cli.py"), "serve", "--port", "0", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2 and "TEMPORAL_ADDRESS is not set" in out.decode(), out.decode()
