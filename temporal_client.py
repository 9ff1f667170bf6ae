"""The Temporal connection every process shares: the data converter and the client of TEMPORAL_ADDRESS."""

from __future__ import annotations

import functools

from pydantic import TypeAdapter
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import DataConverter

from settings import Settings

# Payloads are our dataclasses with Decimal and aware datetimes: pydantic round-trips them exactly. The
# SDK builds a payload converter per workflow run, each with an empty cache of pydantic TypeAdapters;
# with a run per renewal, rebuilding them was ~12% of the worker's CPU. One process-wide cache instead.
_TYPE_ADAPTERS = functools.lru_cache(maxsize=1024)(TypeAdapter)


class BillingPayloadConverter(PydanticPayloadConverter):
    def __init__(self) -> None:
        super().__init__()
        for converter in self.converters.values():
            if isinstance(converter, PydanticJSONPlainPayloadConverter):
                converter._type_adapter = _TYPE_ADAPTERS


DATA_CONVERTER = DataConverter(payload_converter_class=BillingPayloadConverter)
DEV_SERVER_ADDRESS = "localhost:7233"  # where the embedded dev server listens (stack/temporal.py)


async def connect_client(settings: Settings) -> Client:
    """A client of TEMPORAL_ADDRESS, or of the embedded dev server the main command starts."""
    return await Client.connect(settings.temporal_address or DEV_SERVER_ADDRESS,
                                namespace=settings.temporal_namespace, data_converter=DATA_CONVERTER)
