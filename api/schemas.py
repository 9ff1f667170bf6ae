"""The API's JSON shapes (DESIGN.md section 9): credits as decimal strings, money as integer cents plus a
currency, UTC RFC 3339 times. Requests forbid unknown members, so a misspelt field is a 422, not ignored."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

# Credits travel as decimal strings ("12.5"): JSON numbers are floats to most parsers.
Credits = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str, when_used="json")]
CreditsIn = Annotated[Decimal, Field(description="credits, as a decimal string such as \"12.5\"")]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DebitIn(Request):
    action: str
    tier: str | None = None
    quantity: Annotated[Decimal, Field(description="units of the action, a decimal string or an integer")] \
        = Decimal(1)
    user_id: str | None = None
    country: str | None = None


class DebitOut(BaseModel):
    org_id: str
    idempotency_key: str
    cost: Credits
    available: Credits | None
    replayed: bool


class BalanceOut(BaseModel):
    org_id: str
    plan_name: str
    available: Credits
    plan: Credits
    topup: Credits
    held: Credits
    allocation: Credits
    consumed_this_period: Credits
    period_start: datetime
    period_end: datetime | None


class Whoami(BaseModel):
    key_id: str
    role: str
    org_id: str | None
    user_id: str | None
