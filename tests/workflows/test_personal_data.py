"""Billing contacts stay out of Temporal history in clear text (failure model rule 9): the payloads of
types that hold one are sealed by the payload codec (temporal_client.py); the rest stays readable."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from models.billing_types import SendEmail
from models.subscription_types import SubscribeRequest
from temporal_client import DEV_PAYLOAD_KEY, data_converter, parse_keys
from testkit import TestKit

EMAIL = "ada.lovelace@analytical.test"


async def test_a_payload_with_a_contact_is_sealed_and_opens_again() -> None:
    conv = data_converter([DEV_PAYLOAD_KEY])
    req = SubscribeRequest("pro", 2, EMAIL, "month", 0, None, Decimal("0.2"))
    [sealed] = await conv.encode([req])
    assert EMAIL.encode() not in sealed.SerializeToString()
    assert sealed.metadata["encoding"] == b"binary/billing-sealed"
    [back] = await conv.decode([sealed], [SubscribeRequest])
    assert back == req
    # What holds no contact stays readable: a summary, an amount.
    [plain] = await conv.encode(["Grant 3000 pro credits"])
    assert plain.data == b'"Grant 3000 pro credits"'


async def test_keys_rotate_and_a_wrong_key_is_refused() -> None:
    old, new = os.urandom(32), os.urandom(32)
    req = SendEmail("acme", "acme:k", "receipt", EMAIL, datetime(2026, 1, 1, tzinfo=UTC), {"org_id": "acme"})
    [sealed] = await data_converter([old]).encode([req])
    # The new key first seals; the old one still opens what it sealed.
    assert (await data_converter([new, old]).decode([sealed], [SendEmail]))[0] == req
    with pytest.raises(ValueError, match="lacks"):
        await data_converter([new]).decode([sealed], [SendEmail])
    text = ",".join(base64.b64encode(k).decode() for k in (new, old))
    assert parse_keys(text) == [new, old]
    with pytest.raises(ValueError, match="32 bytes"):
        parse_keys("c2hvcnQ=")


async def test_no_contact_in_clear_text_in_a_subscriptions_history(kit: TestKit, org: str) -> None:
    await kit.billing.subscribe(org, plan="pro", email=EMAIL)
    await kit.billing.upgrade(org, plan="enterprise")
    await kit.settle()
    assert {e.to for e in kit.emails(org)} == {EMAIL}  # the emails went out to the contact
    history = await kit.env.client.get_workflow_handle(f"subscription:{org}").fetch_history()
    raw = history.to_json()  # the events as the server stores them, payloads as encoded (base64 in JSON)
    payloads = list(_payload_data(json.loads(raw)))
    assert len(payloads) > 10
    assert not [p for p in payloads if EMAIL.encode() in p] and EMAIL not in raw
    assert any(b"Email receipt to the billing contact" in p for p in payloads)  # summaries stay readable


def _payload_data(node: Any) -> Iterator[bytes]:
    """The bytes of every payload in a history's JSON form."""
    if isinstance(node, dict):
        if isinstance(node.get("data"), str) and "metadata" in node:
            yield base64.b64decode(node["data"])
        for value in node.values():
            yield from _payload_data(value)
    elif isinstance(node, list):
        for value in node:
            yield from _payload_data(value)
