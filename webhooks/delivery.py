"""Deliver an endpoint's events, signed per Standard Webhooks, in seq order, at least once.

One call (the WebhookDelivery workflow's activity, activities/webhooks.py) takes the endpoint's lock, reads
its next events (its organization's, or every one's for a platform-wide endpoint, of the types it wants),
POSTs them one by one and moves the endpoint's cursor after each 2xx, so a retry starts where the last 2xx
left off. A non-2xx answer or a network error stops the call: the failure is recorded on the endpoint
(failing_since, failed_attempts, last_error) and raised, and Temporal retries the call with exponential
backoff (its attempts show in the UI). An endpoint failing for longer than `disable_after` is disabled and
its owner emailed once; the call then answers `stopped` and the workflow ends.

At least once, not exactly once: a crash between the endpoint's 2xx and the cursor's commit sends that event
again, with the same webhook-id (the event's id), which receivers use to drop the copy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from psycopg import AsyncConnection
from standardwebhooks.webhooks import Webhook
from temporalio.exceptions import ApplicationError

from ledger.pool import LeanPool
from mail.mailer import Mailer
from models.billing_types import SendEmail
from models.keys import stamp
from models.webhook_types import (
    DISABLE_AFTER_DAYS,
    DISABLED_FAILING,
    DeliveryResult,
    Event,
    event_payload,
)

log = logging.getLogger(__name__)

BATCH = 100                      # events per call at most
CALL_SECONDS = 60.0              # a call stops taking new events after this long (the workflow calls again)
REQUEST_TIMEOUT = 10.0           # per POST: an endpoint that does not answer in time failed
ERROR_MAX_CHARS = 500
USER_AGENT = "billing-engine-webhooks/1"
PLATFORM = "platform"            # the outbox's organization for a platform-wide endpoint's notice
# pg_advisory_lock(class, hashtext(endpoint id)): one deliverer per endpoint. Not 0007's event lock class
# ('webh', 2003133032): an endpoint must never hold the lock every event-writing transaction takes.
_LOCK_CLASS = 2003133033

_ENDPOINT = ("SELECT id, org_id, url, secret, event_types, enabled, deleted_at, delivered_seq, failing_since, "
             "disabled_at, disabled_reason, owner_email FROM webhook_endpoints WHERE id = %s")
_NEXT = """
SELECT seq, id, org_id, type, data, created_at FROM events
WHERE seq > %(after)s AND seq <= %(head)s AND type = ANY(%(types)s) AND (%(org)s::text IS NULL OR org_id = %(org)s)
ORDER BY seq LIMIT %(limit)s
"""


class DeliveryFailed(Exception):
    """The endpoint did not acknowledge an event: a non-2xx answer, a timeout, a refused connection."""


class WebhookDeliveries:
    def __init__(self, pool: LeanPool, mailer: Mailer | None = None, *,
                 disable_after: timedelta = timedelta(days=DISABLE_AFTER_DAYS), batch: int = BATCH,
                 request_timeout: float = REQUEST_TIMEOUT, call_seconds: float = CALL_SECONDS) -> None:
        self.pool = pool
        self.mailer = mailer
        self.disable_after = disable_after
        self.batch = batch
        self.call_seconds = call_seconds
        self.http = httpx.AsyncClient(timeout=request_timeout, follow_redirects=False,
                                      headers={"user-agent": USER_AGENT})
        self._owns_pool = False

    @classmethod
    async def open(cls, database_url: str, *, pool_size: int = 4, **kwargs: Any) -> WebhookDeliveries:
        """With a pool of its own: a call holds its connection (and the endpoint's lock) across its POSTs, which
        must not starve the ledger, payments or email pools."""
        pool = LeanPool(database_url, pool_size)
        await pool.open()
        deliveries = cls(pool, **kwargs)
        deliveries._owns_pool = True
        return deliveries

    async def close(self) -> None:
        await self.http.aclose()
        if self._owns_pool:
            await self.pool.close()

    async def deliver(self, endpoint_id: str, now: datetime,
                      heartbeat: Callable[[], None] = lambda: None) -> DeliveryResult:
        """Deliver the endpoint's next events (module docstring). `now`: business time of this attempt (the
        activity's start, by Temporal's clock), which failing_since and the disable rule count in."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, endpoint_id))
            row = await cur.fetchone()
            if not (row and row[0]):
                # Another attempt still runs (its worker lost, not yet timed out): Temporal retries this one.
                raise ApplicationError(f"webhook endpoint {endpoint_id} is being delivered by another attempt",
                                       type="WebhookEndpointBusy")
            try:
                return await self._deliver(conn, endpoint_id, now, heartbeat)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, endpoint_id))

    async def _deliver(self, conn: AsyncConnection[Any], endpoint_id: str, now: datetime,
                       heartbeat: Callable[[], None]) -> DeliveryResult:
        cur = await conn.execute(_ENDPOINT, (endpoint_id,))
        ep = await cur.fetchone()
        if ep is None or ep[6] is not None:
            return DeliveryResult(0, more=False, stopped="deleted")
        (_, org_id, url, secret, types, enabled, _, after, _, disabled_at, reason, owner) = ep
        if not enabled:
            if reason == DISABLED_FAILING:
                await self._tell_owner(conn, endpoint_id, org_id, url, owner, disabled_at, now)
            return DeliveryResult(0, more=False, stopped="disabled")
        cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM events")
        head = int((await cur.fetchone() or (0,))[0])
        cur = await conn.execute(_NEXT, {"after": after, "head": head, "types": list(types), "org": org_id,
                                         "limit": self.batch})
        events = [Event(*r) for r in await cur.fetchall()]
        signer = Webhook(secret)
        started = time.monotonic()
        delivered = 0
        for event in events:
            if time.monotonic() - started > self.call_seconds:
                return DeliveryResult(delivered, more=True)
            heartbeat()
            try:
                await self._post(url, signer, event)
            except DeliveryFailed as exc:
                return await self._failed(conn, endpoint_id, org_id, url, owner, str(exc), now, delivered)
            await self._delivered(conn, endpoint_id, event, now)
            delivered += 1
        if len(events) < self.batch:
            # Nothing else up to the head matches: the cursor moves past what this endpoint does not want, so
            # the dispatcher's look for its next events starts from here.
            await conn.execute("UPDATE webhook_endpoints SET delivered_seq = greatest(delivered_seq, %s) "
                               "WHERE id = %s", (head, endpoint_id))
            return DeliveryResult(delivered, more=False)
        return DeliveryResult(delivered, more=True)

    async def _post(self, url: str, signer: Webhook, event: Event) -> None:
        body = json.dumps(event_payload(event), separators=(",", ":"), ensure_ascii=False)
        # Wall-clock time, whatever the business clock: receivers refuse a timestamp more than 5 minutes off.
        sent_at = datetime.fromtimestamp(int(time.time()), UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(event.id, sent_at, body),
        }
        try:
            answer = await self.http.post(url, content=body.encode(), headers=headers)
        except Exception as exc:  # a refused connection, a timeout, a URL httpx cannot use: the endpoint failed
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]) from exc
        if not 200 <= answer.status_code < 300:
            text = answer.text[:200].strip()
            raise DeliveryFailed(f"HTTP {answer.status_code}{': ' + text if text else ''}"[:ERROR_MAX_CHARS])

    async def _delivered(self, conn: AsyncConnection[Any], endpoint_id: str, event: Event, now: datetime) -> None:
        """The endpoint acknowledged `event`: its cursor moves past it (a separate method so a test can kill
        the worker right before, as a crash after the 2xx would)."""
        await conn.execute(
            "UPDATE webhook_endpoints SET delivered_seq = greatest(delivered_seq, %s), failing_since = NULL, "
            "failed_attempts = 0, last_error = NULL, last_attempt_at = %s, last_success_at = %s WHERE id = %s",
            (event.seq, now, now, endpoint_id))

    async def _failed(self, conn: AsyncConnection[Any], endpoint_id: str, org_id: str | None, url: str,
                      owner: str | None, error: str, now: datetime, delivered: int) -> DeliveryResult:
        cur = await conn.execute(
            "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, %s), "
            "failed_attempts = failed_attempts + 1, last_error = %s, last_attempt_at = %s WHERE id = %s "
            "RETURNING failing_since, failed_attempts", (now, error, now, endpoint_id))
        since, attempts = await cur.fetchone() or (now, 1)
        if now - since < self.disable_after:
            log.info("webhook endpoint %s failing since %s (attempt %d): %s", endpoint_id, stamp(since), attempts,
                     error)
            # Retryable: Temporal tries the call again with exponential backoff.
            raise ApplicationError(f"webhook endpoint {endpoint_id}: {error} (failing since {stamp(since)}, "
                                   f"{attempts} failed attempts)", type="WebhookDeliveryFailed")
        cur = await conn.execute(
            "UPDATE webhook_endpoints SET enabled = false, disabled_at = %s, disabled_reason = %s "
            "WHERE id = %s AND enabled RETURNING disabled_at", (now, DISABLED_FAILING, endpoint_id))
        row = await cur.fetchone()
        disabled_at = row[0] if row else now
        log.warning("webhook endpoint %s disabled: failing since %s (%d attempts): %s", endpoint_id, stamp(since),
                    attempts, error)
        await self._tell_owner(conn, endpoint_id, org_id, url, owner, disabled_at, now)
        return DeliveryResult(delivered, more=False, stopped="failing")

    async def _tell_owner(self, conn: AsyncConnection[Any], endpoint_id: str, org_id: str | None, url: str,
                          owner: str | None, disabled_at: datetime, now: datetime) -> None:
        """Email the endpoint's owner (else its organization's billing contact) that it was disabled: once per
        disablement, by its key (a retry of this call finds the outbox row)."""
        if self.mailer is None:
            return
        to = owner
        if to is None and org_id is not None:
            cur = await conn.execute("SELECT email FROM billing_profiles WHERE org_id = %s", (org_id,))
            row = await cur.fetchone()
            to = row[0] if row else None
        if to is None:
            log.warning("webhook endpoint %s disabled: no owner to email", endpoint_id)
            return
        cur = await conn.execute("SELECT failing_since, failed_attempts, last_error FROM webhook_endpoints "
                                 "WHERE id = %s", (endpoint_id,))
        since, attempts, error = await cur.fetchone() or (None, 0, None)
        try:
            result = await self.mailer.send(SendEmail(
                org_id or PLATFORM, f"webhook:{endpoint_id}:disabled:{stamp(disabled_at)}", "webhook_disabled", to,
                now, {"endpoint_id": endpoint_id, "url": url, "failing_since": stamp(since or disabled_at),
                      "attempts": attempts, "error": error or "", "disabled_at": stamp(disabled_at)}))
        except ApplicationError as exc:
            if not exc.non_retryable:
                raise  # SMTP away: the call is retried, and finds the rendered notice in the outbox
            log.error("webhook endpoint %s: the disable notice cannot be sent: %s", endpoint_id, exc)
            return
        if result.failed:
            log.error("webhook endpoint %s: the disable notice was refused: %s", endpoint_id, result.failed)
