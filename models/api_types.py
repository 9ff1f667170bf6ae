"""API keys and their roles (docs/api.md): plain types and the one rule of who reaches what; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from models.checks import check_id, shown
from models.errors import Forbidden, InvalidRequest, UnknownOrganization

Role = Literal["platform", "admin", "member"]
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True)
class ApiKey:
    """A key as stored and listed: never its secret (shown once, at creation), only its first characters."""

    id: str
    role: Role
    org_id: str | None      # None: a platform key, every organization
    user_id: str | None     # a member key's user
    prefix: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    created_by: str | None = None

    def reach(self, org_id: str) -> str:
        """`org_id` if this key may act on it. Another organization answers exactly as one that does not
        exist (UnknownOrganization, 404): a key learns nothing of organizations beyond its own."""
        if self.org_id is not None and self.org_id != org_id:
            raise UnknownOrganization(org_id)
        return org_id

    def require(self, *roles: Role) -> None:
        """Refuse (Forbidden, 403) unless this key has one of `roles`."""
        if self.role not in roles:
            raise Forbidden(f"a {self.role} key cannot do this; it needs a {' or '.join(roles)} key")

    def as_user(self, user_id: str | None) -> str | None:
        """The user a metering call runs as: a member key always meters as its own user (naming another is
        Forbidden); other keys name any user or none."""
        if self.role != "member":
            return user_id
        if user_id is not None and user_id != self.user_id:
            raise Forbidden(f"a member key meters only as its own user {self.user_id!r}, not {user_id!r}")
        return self.user_id


@dataclass(frozen=True)
class NewKey:
    """A key just created: its secret, shown this once."""

    key: ApiKey
    secret: str


def check_new_key(creator: ApiKey | None, role: object, org_id: object, user_id: object) -> tuple[Role, str | None,
                                                                                                   str | None]:
    """What a new key may be, checked before it is written. `creator` None is the operator (the CLI, the main
    command): anything. A platform key creates any key; an admin key creates admin and member keys of its own
    organization; a member key creates none."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, got {shown(role)}")
    if role == "platform":
        if org_id is not None or user_id is not None:
            raise InvalidRequest("a platform key reaches every organization: it takes no org_id or user_id")
    else:
        org_id = check_id("org_id", org_id)
        if role == "member":
            user_id = check_id("user_id", user_id)
        elif user_id is not None:
            raise InvalidRequest("an admin key acts for its whole organization: it takes no user_id")
    if creator is not None:
        if creator.role == "member" or (creator.role == "admin" and role == "platform"):
            raise Forbidden(f"a {creator.role} key cannot create a {role} key")
        if org_id is not None:
            creator.reach(org_id)
    return role, org_id, user_id
