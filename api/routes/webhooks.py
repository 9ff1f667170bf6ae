"""Outgoing webhooks over HTTP (DESIGN.md section 9, docs/webhooks.md): register endpoints (an organization's, or
platform-wide with a platform key), list, delete and re-enable them, read a signing secret again; and the event log
by cursor, `GET /v1/events?after=`, for a consumer to catch up on what it missed.

Who reaches what: a platform key every endpoint and event; an admin key its organization's (another organization's
endpoint is 404, as one that does not exist; a platform-wide endpoint is beyond it too); a member key none (403).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query
from fastapi import Request as HttpRequest
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.idempotency import IdempotencyKeyHeader, IdempotentPost
from api.openapi import problems
from api.schemas import Answer, Request, Time
from api.service import Caller, Svc
from models.api_types import ApiKey
from models.webhook_types import EVENT_TYPES, WebhookEndpoint, check_endpoint, event_payload
from webhooks.store import EVENTS_PAGE_MAX, WebhookStore

router = APIRouter(tags=["webhooks"])
T = TypeVar("T")



async def _store(request: HttpRequest) -> WebhookStore:  # async: no thread-pool hop (api/service.py)
    store: WebhookStore | None = getattr(request.app.state, "webhooks", None)
    if store is None:
        store = WebhookStore(request.app.state.service.billing.ledger.pool)
        request.app.state.webhooks = store
    return store


Webhooks = Annotated[WebhookStore, Depends(_store)]
EventType = Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})]


class EndpointIn(Request):
    url: str = Field(description="where events are POSTed: http(s), at most 2,000 characters",
                     examples=["https://example.com/billing-hooks"])
    events: list[EventType] = Field(description="the event types it receives (docs/webhooks.md)", min_length=1)
    org_id: str | None = Field(default=None, description="the organization whose events it receives (an admin "
                               "key: its own, the default); null with a platform key: every organization's")
    owner_email: str | None = Field(default=None, description="who is emailed if the engine disables the endpoint "
                                    "(default: the organization's billing contact)")
    description: str = ""


class EndpointOut(Answer):
    id: str
    org_id: str | None = Field(description="null: platform-wide")
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: Time
    delivered_seq: int = Field(description="every event it wants up to this seq was delivered")
    failing_since: Time | None = Field(description="the first failed attempt since its last delivery")
    failed_attempts: int
    last_error: str | None
    disabled_at: Time | None
    disabled_reason: str | None = Field(description="'failing': failing for longer than the engine allows")


class NewEndpointOut(EndpointOut):
    secret: str | None = Field(description="the Standard Webhooks signing secret (whsec_...); null in an "
                               "Idempotency-Key replay: GET /v1/webhook-endpoints/{id}/secret reads it")


class EndpointsOut(BaseModel):
    data: list[EndpointOut]


class SecretOut(BaseModel):
    id: str
    secret: str


class EventOut(BaseModel):
    id: str = Field(description="evt_...: the same on every delivery (the webhook-id header)")
    seq: int = Field(description="the cursor: pass the last one seen as ?after=")
    type: str
    org_id: str
    timestamp: str = Field(description="when its cause happened (UTC, RFC 3339)")
    data: dict[str, Any]


class EventsOut(BaseModel):
    data: list[EventOut]
    next_after: int = Field(description="the cursor of the next page: the last seq here (or the one asked for "
                            "when there is nothing new yet)")


def _out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut.model_validate(endpoint)


def _scope(key: ApiKey) -> str | None:
    """The organization a platform or admin key manages endpoints of (None: every one, a platform key)."""
    key.require("platform", "admin")
    return key.org_id


@router.post("/v1/webhook-endpoints", response_model=NewEndpointOut, status_code=201,
             responses=problems("UnknownOrganization", "Forbidden", "IdempotencyConflict"))
async def create_endpoint(body: EndpointIn, key: Caller, svc: Svc, store: Webhooks, once: IdempotentPost,
                          idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Register an endpoint; `secret` signs its deliveries (Standard Webhooks: webhook-id, webhook-timestamp,
    webhook-signature). It receives the events written from now on, in order, each at least once."""
    key.require("platform", "admin")
    org_id = body.org_id
    if key.role == "admin":
        org_id = key.org_id if org_id is None else key.reach(org_id)
    check_endpoint(body.url, body.events, org_id, body.owner_email, body.description)  # refused before any claim

    async def run() -> NewEndpointOut:
        new = await store.create(url=body.url, events=body.events, org_id=org_id, owner_email=body.owner_email,
                                 description=body.description, created_by=key.id, now=svc.now())
        return NewEndpointOut.model_validate({**_out(new.endpoint).model_dump(), "secret": new.secret})

    def without_secret(answer: BaseModel) -> BaseModel:
        return answer.model_copy(update={"secret": None})

    return await once(org_id or "", idempotency_key, run, status_code=201, stored=without_secret)


OrgFilter = Annotated[str | None, Query(description="only this organization's endpoints (an admin key: its own, "
                                        "always)")]


@router.get("/v1/webhook-endpoints", response_model=EndpointsOut,
            responses=problems("UnknownOrganization", "Forbidden"))
async def list_endpoints(key: Caller, store: Webhooks, org_id: OrgFilter = None) -> EndpointsOut:
    """Live endpoints, oldest first, without their secrets: with their delivery state (cursor, failures)."""
    scope = _scope(key)
    if scope is not None:
        org_id = key.reach(org_id) if org_id is not None else scope
    return EndpointsOut(data=[_out(e) for e in await store.endpoints(org_id=org_id)])


@router.get("/v1/webhook-endpoints/{endpoint_id}", response_model=EndpointOut,
            responses=problems("UnknownWebhookEndpoint", "Forbidden"))
async def get_endpoint(endpoint_id: str, key: Caller, store: Webhooks) -> EndpointOut:
    scope = _scope(key)
    return _out(await store.get(endpoint_id, org_id=scope))


@router.get("/v1/webhook-endpoints/{endpoint_id}/secret", response_model=SecretOut,
            responses=problems("UnknownWebhookEndpoint", "Forbidden"))
async def get_secret(endpoint_id: str, key: Caller, store: Webhooks) -> SecretOut:
    """The endpoint's signing secret (whsec_...), for a receiver that lost it."""
    scope = _scope(key)
    await store.get(endpoint_id, org_id=scope)
    return SecretOut(id=endpoint_id, secret=await store.secret(endpoint_id))


@router.delete("/v1/webhook-endpoints/{endpoint_id}", status_code=204, response_class=Response,
               responses=problems("UnknownWebhookEndpoint", "Forbidden"))
async def delete_endpoint(endpoint_id: str, key: Caller, svc: Svc, store: Webhooks) -> Response:
    """Delete an endpoint: nothing more is delivered to it (a repeat is 404)."""
    scope = _scope(key)
    await store.delete(endpoint_id, now=svc.now(), org_id=scope)
    return Response(status_code=204)


@router.post("/v1/webhook-endpoints/{endpoint_id}/enable", response_model=EndpointOut,
             responses=problems("UnknownWebhookEndpoint", "Forbidden"))
async def enable_endpoint(endpoint_id: str, key: Caller, svc: Svc, store: Webhooks) -> EndpointOut:
    """Enable an endpoint the engine disabled for failing: it then receives every event it missed, in order (a
    repeat, or an endpoint already enabled, answers it as it is)."""
    scope = _scope(key)
    return _out(await store.enable(endpoint_id, now=svc.now(), org_id=scope))


After = Annotated[int, Query(ge=0, description="the cursor: the last seq seen (0: from the start)")]
Limit = Annotated[int, Query(ge=1, le=EVENTS_PAGE_MAX, description="events per page")]
EventsOrg = Annotated[str | None, Query(description="only this organization's events (an admin key: its own, "
                                        "always)")]


@router.get("/v1/events", response_model=EventsOut, responses=problems("UnknownOrganization", "Forbidden"))
async def list_events(key: Caller, store: Webhooks, after: After = 0, limit: Limit = 100,
                      org_id: EventsOrg = None) -> EventsOut:
    """Events after the cursor, oldest first: every event a webhook carries, each once, in commit order. Page with
    `after=next_after` until `data` is empty; nothing is skipped or repeated."""
    scope = _scope(key)
    if scope is not None:
        org_id = key.reach(org_id) if org_id is not None else scope
    events = await store.events(after=after, limit=limit, org_id=org_id)
    return EventsOut(data=[EventOut.model_validate(event_payload(e)) for e in events],
                     next_after=events[-1].seq if events else after)
