"""What the org routes share: who may act on an organization, in the one order that leaks nothing (reach first:
another organization answers 404 as an unknown one, before its role or its request is looked at)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from models.api_types import ApiKey

OrgId = Annotated[str, Path(description="the organization's id", examples=["acme"])]
Action = Annotated[str, Path(description="an action of the catalog's price book", examples=["ai_chat"])]

# Errors every route under /v1/orgs/{org_id} may answer beside api/openapi.py's ALWAYS.
ORG = ("UnknownOrganization",)
MANAGE = ("UnknownOrganization", "Forbidden")


def managing(key: ApiKey, org_id: str) -> str:
    """`org_id` if this key manages it: a platform key, or an admin key of it (a member is Forbidden)."""
    key.reach(org_id)
    key.require("platform", "admin")
    return org_id
