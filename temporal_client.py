"""The Temporal connection every process shares: the data converter and the client of TEMPORAL_ADDRESS.

Personal data stays out of Temporal history in clear text (failure model rule 9). The payloads of the
types that hold a billing contact (their class says `personal_data = True`: the subscribe request and
state, the customer and email requests, the billing profile...) are sealed with AES-256-GCM by a payload
codec before they leave the process, and opened when they come back; every other payload (amounts,
plans, ids, the summaries operators read in the UI) stays readable. The keys come from
BILLING_PAYLOAD_KEYS (settings.py): the first seals, every one opens, so a key is rotated by putting the
new one first and dropping the old one once no open history needs it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import DataConverter, PayloadCodec

from models.errors import ServiceUnavailable
from settings import Settings

# Payloads are our dataclasses with Decimal and aware datetimes: pydantic round-trips them exactly. The
# SDK builds a payload converter per workflow run, each with an empty cache of pydantic TypeAdapters;
# with a run per renewal, rebuilding them was ~12% of the worker's CPU. One process-wide cache instead.
_TYPE_ADAPTERS = functools.lru_cache(maxsize=1024)(TypeAdapter)

PERSONAL = "billing-personal"           # metadata: this payload holds personal data, to be sealed
SEALED_ENCODING = b"binary/billing-sealed"
KEY_ID = "billing-key-id"
NONCE_BYTES = 12


class BillingPayloadConverter(PydanticPayloadConverter):
    def __init__(self) -> None:
        super().__init__()
        for converter in self.converters.values():
            if isinstance(converter, PydanticJSONPlainPayloadConverter):
                converter._type_adapter = _TYPE_ADAPTERS

    def to_payloads(self, values: Sequence[Any]) -> list[Payload]:
        payloads = super().to_payloads(values)
        for value, payload in zip(values, payloads, strict=True):
            if getattr(type(value), "personal_data", False):
                payload.metadata[PERSONAL] = b"1"  # the codec seals it
        return payloads


def key_id(key: bytes) -> str:
    """A short public name of a key (not the key): which one sealed a payload."""
    return hashlib.sha256(b"billing-payload-key:" + key).hexdigest()[:16]


def parse_keys(text: str) -> list[bytes]:
    """BILLING_PAYLOAD_KEYS: comma-separated base64 keys of 32 bytes each; ValueError otherwise."""
    keys = []
    for part in (p.strip() for p in text.split(",")):
        try:
            key = base64.b64decode(part, validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError("BILLING_PAYLOAD_KEYS must be base64 keys of 32 bytes, comma-separated (make one "
                             "with: python3 -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')")
        keys.append(key)
    return keys


class PersonalDataCodec(PayloadCodec):
    """Seals the payloads the converter marked personal (AES-256-GCM, a random nonce each); opens sealed
    payloads with the key that sealed them. Unmarked payloads, and histories recorded before sealing,
    pass through unchanged."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("the payload codec needs at least one key")
        self._seal_id = key_id(keys[0])
        self._seal = AESGCM(keys[0])
        self._open = {key_id(k): AESGCM(k) for k in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._sealed(p) if p.metadata.get(PERSONAL) == b"1" else p for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._opened(p) if p.metadata.get("encoding") == SEALED_ENCODING else p for p in payloads]

    def _sealed(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        data = nonce + self._seal.encrypt(nonce, payload.SerializeToString(), None)
        return Payload(metadata={"encoding": SEALED_ENCODING, KEY_ID: self._seal_id.encode()}, data=data)

    def _opened(self, payload: Payload) -> Payload:
        name = payload.metadata.get(KEY_ID, b"").decode()
        aead = self._open.get(name)
        if aead is None:
            raise ValueError(f"a sealed payload needs payload key {name!r}, which BILLING_PAYLOAD_KEYS lacks")
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag:
            raise ValueError(f"a payload sealed with key {name!r} was altered or the key is wrong") from None
        return Payload.FromString(plain)


# The development key: public, for the embedded stack, the test kit and BILLING_DEV_MODE only.
DEV_PAYLOAD_KEY = hashlib.sha256(b"billing-engine development payload key: not a secret").digest()


def data_converter(keys: Sequence[bytes]) -> DataConverter:
    return DataConverter(payload_converter_class=BillingPayloadConverter, payload_codec=PersonalDataCodec(keys))


DEV_PAYLOAD_KEYS = base64.b64encode(DEV_PAYLOAD_KEY).decode()  # as BILLING_PAYLOAD_KEYS spells it

# The converter of development and tests (the embedded stack, the test kit, history replays).
DATA_CONVERTER = data_converter([DEV_PAYLOAD_KEY])
DEV_SERVER_ADDRESS = "localhost:7233"  # where the embedded dev server listens (stack/temporal.py)


def converter_for(settings: Settings) -> DataConverter:
    """The converter with BILLING_PAYLOAD_KEYS; the development key in development mode only (rule 6)."""
    if settings.payload_keys:
        return data_converter(parse_keys(settings.payload_keys))
    if settings.dev_mode:
        return DATA_CONVERTER
    raise ServiceUnavailable("BILLING_PAYLOAD_KEYS is not set: billing contacts are sealed in Temporal history "
                             "with it (set BILLING_DEV_MODE=1 for the development key)")


async def connect_client(settings: Settings) -> Client:
    """A client of TEMPORAL_ADDRESS, or of the embedded dev server the main command starts."""
    return await Client.connect(settings.temporal_address or DEV_SERVER_ADDRESS,
                                namespace=settings.temporal_namespace, data_converter=converter_for(settings))
