"""API keys over HTTP (docs/api.md): create (the secret shown once), list (never secrets), revoke.
Who may create what is models/api_types.py's rule, with the calling key as the creator: a platform key any key, an
admin key admin and member keys of its organization, a member key none (403)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from api.idempotency import IdempotencyKeyHeader, IdempotentPost
from api.openapi import problems
from api.schemas import ApiKeyIn, ApiKeyOut, ApiKeysOut, NewApiKeyOut
from api.service import Caller, Svc
from models.api_types import check_new_key

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


@router.post("", response_model=NewApiKeyOut, status_code=201,
             responses=problems("UnknownOrganization", "Forbidden", "IdempotencyConflict"))
async def create_key(body: ApiKeyIn, key: Caller, svc: Svc, once: IdempotentPost,
                     idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """A new key; `key` is its secret, shown this once (it is stored only as a hash). A platform key takes no
    org_id; an admin key an org_id; a member key an org_id and a user_id. An Idempotency-Key replay answers the
    same key with `key: null`: a secret is never stored, so a caller that lost it revokes the key."""
    key.require("platform", "admin")
    _, org_id, _ = check_new_key(key, body.role, body.org_id, body.user_id)  # refused before any key is claimed

    async def run() -> NewApiKeyOut:
        new = await svc.keys.create(role=body.role, org_id=body.org_id, user_id=body.user_id, name=body.name,
                                    creator=key, now=svc.now())
        return NewApiKeyOut.model_validate({**ApiKeyOut.model_validate(new.key).model_dump(), "key": new.secret})

    def without_secret(answer: BaseModel) -> BaseModel:
        return answer.model_copy(update={"key": None})

    return await once(org_id or "", idempotency_key, run, status_code=201, stored=without_secret)


OrgFilter = Annotated[str | None, Query(description="only this organization's keys (an admin key: its own, the "
                                        "default)")]


@router.get("", response_model=ApiKeysOut, responses=problems("UnknownOrganization", "Forbidden"))
async def list_keys(key: Caller, svc: Svc, org_id: OrgFilter = None) -> ApiKeysOut:
    """Live keys, oldest first, without their secrets: a platform key's every key (or one organization's), an
    admin key's its organization's."""
    key.require("platform", "admin")
    if key.role == "admin":
        org_id = key.reach(org_id) if org_id is not None else key.org_id
    keys = await svc.keys.list(org_id=org_id)
    return ApiKeysOut(keys=[ApiKeyOut.model_validate(k) for k in keys])


@router.delete("/{key_id}", response_model=ApiKeyOut, responses=problems("UnknownApiKey", "Forbidden"))
async def revoke_key(key_id: str, key: Caller, svc: Svc) -> ApiKeyOut:
    """Revoke a key at once (a repeat answers as the first). A key beyond this one's reach is 404, as one that
    does not exist."""
    key.require("platform", "admin")
    return ApiKeyOut.model_validate(await svc.keys.revoke(key_id, now=svc.now(), by=key))
