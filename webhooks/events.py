"""The events whose cause is a workflow step, not a row.

A step recorded only by its email (a subscription's lifecycle, an auto-recharge's success or limit): its
event is written by the mailer in the transaction that stores the email in the outbox, keyed by the outbox
key, so a retried step, like its email, makes one event. An incident (a step that failed for good and is
retried, failure model rule 3) lives only in its workflow's state: its opening and its resolution are
written by the workflow's own activity (activities/webhooks.py), keyed by the incident's business key, so a
retried activity or a replayed workflow writes each once."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from models.webhook_types import (
    EMAIL_TEMPLATES,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_REVERTED_TO_FREE,
    EmailFacts,
    IncidentChange,
    email_event,
    incident_event,
)

# The latest start or end of the organization's subscription, as its events tell: a trial started and not
# ended yet is a subscription.created whose status is trialing.
_WRITE = "SELECT webhook_event(%s, %s, %s, %s::jsonb, %s), webhook_event_id(%s, %s)"
_LAST_START_OR_END = (
    "SELECT type, data->>'status' FROM events WHERE org_id = %s AND type IN (%s, %s) ORDER BY seq DESC LIMIT 1"
)


async def record_email_event(conn: AsyncConnection[Any], *, org_id: str, key: str, template: str,
                             context: dict[str, Any], at: datetime) -> str | None:
    """Write the event the email `key` stands for, if any, on `conn` (inside the outbox row's transaction);
    returns its type. Its id is the hash of its type and `key` (0007's webhook_event), so it is written once."""
    if template not in EMAIL_TEMPLATES:
        return None
    facts = EmailFacts()
    if template == "receipt":
        # A receipt's key is its payment's key + ":receipt" (models/keys.py step_key): the payment says why.
        cur = await conn.execute("SELECT purpose FROM payments WHERE key = %s", (key.rsplit(":", 1)[0],))
        row = await cur.fetchone()
        purpose = row[0] if row else None
        in_trial = False
        if purpose == "subscription":
            cur = await conn.execute(_LAST_START_OR_END, (org_id, SUBSCRIPTION_CREATED, SUBSCRIPTION_REVERTED_TO_FREE))
            last = await cur.fetchone()
            in_trial = last == (SUBSCRIPTION_CREATED, "trialing")
        facts = EmailFacts(purpose=purpose, in_trial=in_trial)
    made = email_event(template, context, facts)
    if made is None:
        return None
    event_type, data = made
    await conn.execute("SELECT webhook_event(%s, %s, %s, %s::jsonb, %s)",
                       (org_id, event_type, key, json.dumps(data), at))
    return event_type


async def record_incident_event(conn: AsyncConnection[Any], change: IncidentChange) -> str:
    """Write the event of an incident opened or resolved on `conn` (its own transaction); returns the event's
    id, the same for a repeat, which writes nothing more (0007's webhook_event: the id hashes type and key)."""
    event_type, key, data, at = incident_event(change)
    cur = await conn.execute(_WRITE, (change.org_id, event_type, key, json.dumps(data), at, event_type, key))
    row = await cur.fetchone()
    assert row is not None
    return str(row[1])
