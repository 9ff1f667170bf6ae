"""Webhook endpoints and the event log, as the API reads and changes them (who may reach what is the route's
rule, models/api_types.py): register, list, delete, re-enable an endpoint; page through events by cursor."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from ledger.pool import LeanPool
from models.checks import check_id, shown
from models.errors import InvalidRequest, UnknownOrganization
from models.webhook_types import (
    ENDPOINT_ID_PREFIX,
    SECRET_PREFIX,
    Event,
    NewEndpoint,
    UnknownWebhookEndpoint,
    WebhookEndpoint,
    check_endpoint,
    is_endpoint_id,
)

_COLUMNS = ("id, org_id, url, event_types, description, enabled, created_at, delivered_seq, failing_since, "
            "failed_attempts, last_error, disabled_at, disabled_reason, owner_email")
EVENTS_PAGE_MAX = 1000


def _endpoint(row: tuple[Any, ...]) -> WebhookEndpoint:
    return WebhookEndpoint(row[0], row[1], row[2], list(row[3]), *row[4:])


def new_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookStore:
    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool

    async def create(self, *, url: object, events: object, org_id: object = None, owner_email: object = None,
                     description: object = "", created_by: str | None = None, now: datetime) -> NewEndpoint:
        """A new endpoint, refused typed before anything is written. It receives the events written from now
        on (a consumer catches up on earlier ones with GET /v1/events?after=)."""
        url_, types, org, email, text = check_endpoint(url, events, org_id, owner_email, description)
        if org is not None and await self.pool.fetchone("SELECT 1 FROM wallets WHERE org_id = %s", (org,)) is None:
            raise UnknownOrganization(org)
        endpoint_id = ENDPOINT_ID_PREFIX + secrets.token_hex(8)
        secret = new_secret()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO webhook_endpoints (id, org_id, url, secret, event_types, description, owner_email, "
                "created_by, created_at, delivered_seq) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, (SELECT coalesce(max(seq), 0) FROM events)) "
                f"RETURNING {_COLUMNS}",
                (endpoint_id, org, url_, secret, types, text, email, created_by, now))
            row = await cur.fetchone()
        assert row is not None
        return NewEndpoint(_endpoint(row), secret)

    async def endpoints(self, *, org_id: str | None = None, include_platform: bool = True) -> list[WebhookEndpoint]:
        """Live endpoints, oldest first: an organization's (`org_id`), or every one (`org_id` None; with
        `include_platform` False, only organizations')."""
        where, params = ["deleted_at IS NULL"], []
        if org_id is not None:
            where.append("org_id = %s")
            params.append(check_id("org_id", org_id))
        elif not include_platform:
            where.append("org_id IS NOT NULL")
        rows = await self.pool.fetchall(
            f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE {' AND '.join(where)} ORDER BY created_at, id",
            tuple(params))
        return [_endpoint(r) for r in rows]

    async def get(self, endpoint_id: object, *, org_id: str | None = None) -> WebhookEndpoint:
        """A live endpoint; with `org_id`, only one of that organization (any other, or one that does not exist,
        is UnknownWebhookEndpoint: a key learns nothing of endpoints beyond its reach)."""
        if not is_endpoint_id(endpoint_id):
            raise UnknownWebhookEndpoint(shown(endpoint_id))
        assert isinstance(endpoint_id, str)
        row = await self.pool.fetchone(
            f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE id = %s AND deleted_at IS NULL", (endpoint_id,))
        if row is None or (org_id is not None and row[1] != org_id):
            raise UnknownWebhookEndpoint(endpoint_id)
        return _endpoint(row)

    async def secret(self, endpoint_id: str) -> str:
        """A live endpoint's signing secret (the caller checked its reach with `get`)."""
        row = await self.pool.fetchone(
            "SELECT secret FROM webhook_endpoints WHERE id = %s AND deleted_at IS NULL", (endpoint_id,))
        if row is None:
            raise UnknownWebhookEndpoint(endpoint_id)
        return str(row[0])

    async def delete(self, endpoint_id: str, *, now: datetime, org_id: str | None = None) -> None:
        """Delete an endpoint: nothing more is delivered to it (its delivery workflow stops at its next call)."""
        await self.get(endpoint_id, org_id=org_id)
        await self.pool.fetchall(
            "UPDATE webhook_endpoints SET deleted_at = coalesce(deleted_at, %s) WHERE id = %s RETURNING id",
            (now, endpoint_id))

    async def enable(self, endpoint_id: str, *, now: datetime, org_id: str | None = None) -> WebhookEndpoint:
        """Enable an endpoint the engine disabled (or answer it as it is): deliveries resume from its cursor,
        so it gets what it missed meanwhile, in order; its failure record starts over."""
        await self.get(endpoint_id, org_id=org_id)
        row = await self.pool.fetchone(
            "UPDATE webhook_endpoints SET enabled = true, disabled_at = NULL, disabled_reason = NULL, "
            "failing_since = CASE WHEN enabled THEN failing_since END, "
            "failed_attempts = CASE WHEN enabled THEN failed_attempts ELSE 0 END "
            f"WHERE id = %s AND deleted_at IS NULL RETURNING {_COLUMNS}", (endpoint_id,))
        if row is None:
            raise UnknownWebhookEndpoint(endpoint_id)
        return _endpoint(row)

    async def events(self, *, after: object = 0, limit: object = 100, org_id: str | None = None) -> list[Event]:
        """Events after the cursor `after` (a seq), oldest first, at most `limit`: an organization's, or every
        one's (`org_id` None). Seqs follow commit order (0007, W2): paging by the last seq seen neither skips
        nor repeats an event."""
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidRequest(f"after is a cursor: a seq from an earlier page (0 for the start), got {shown(after)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= EVENTS_PAGE_MAX:
            raise InvalidRequest(f"limit is a whole number from 1 to {EVENTS_PAGE_MAX}, got {shown(limit)}")
        if org_id is None:
            rows = await self.pool.fetchall(
                "SELECT seq, id, org_id, type, data, created_at FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit))
        else:
            rows = await self.pool.fetchall(
                "SELECT seq, id, org_id, type, data, created_at FROM events WHERE org_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s", (check_id("org_id", org_id), after, limit))
        return [Event(*r) for r in rows]
