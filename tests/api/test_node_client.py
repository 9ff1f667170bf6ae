"""A backend in another language drives the API: Node's built-in fetch, http and crypto, no packages
(tests/api/node_client.mjs). It creates a key, subscribes, registers a webhook endpoint, debits until refused,
reads the balance, and receives a webhook whose Standard Webhooks signature it checks itself."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from testkit import TestKit

SCRIPT = Path(__file__).with_name("node_client.mjs")
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed on this machine")
async def test_a_node_backend_subscribes_debits_until_refused_and_verifies_a_webhook(kit: TestKit) -> None:
    platform = await kit.api_key("platform")
    assert NODE is not None
    node = await asyncio.create_subprocess_exec(
        NODE, str(SCRIPT), kit.api_url, platform, "node-co", "credits.usage_100",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    finished = asyncio.ensure_future(node.communicate())
    async with asyncio.timeout(240):
        while not finished.done():
            # The kit delivers webhooks when asked (a deployed worker's dispatcher polls on its own).
            await kit.deliver_webhooks()
            await asyncio.wait({finished}, timeout=0.5)
    out, err = finished.result()
    assert node.returncode == 0, err.decode()[-3000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    # starter: 3,000 credits; a debit of 100 smart messages costs 500: six go through, the seventh is refused.
    assert seen["debits"] == 6
    assert seen["refusal_status"] == 403 and seen["refusal_type"].endswith("/InsufficientCredits")
    assert seen["refusal_content_type"] == "application/problem+json"
    assert seen["available"] == "0.000"
    webhook = seen["webhook"]
    assert webhook["event"]["type"] == "credits.usage_100" and webhook["event"]["org_id"] == "node-co"
    assert webhook["id"] == webhook["event"]["id"] and seen["invalid"] == 0
