"""The one id rule and the one time rule every entry point applies before anything is written."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from models.errors import InvalidRequest

# '%' and ':' matter to models/keys.py: '%' is never allowed, so a ':' written as '%3A' is unambiguous.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,199}")


def check_id(kind: str, value: object) -> str:
    """Organization ids, user ids and idempotency keys: non-empty, printable, at most 200 chars."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{kind} must be a non-empty string, got {value!r}")
    if not _ID.fullmatch(value):
        raise InvalidRequest(
            f"{kind} {value!r} must be 1-200 characters of letters, digits and _.:@/+- "
            "(starting with a letter or digit)"
        )
    return value


# Business keys (models/keys.py) join ids with ':' and write a ':' inside an id as '%3A', so they may hold
# '%' and be longer than an id: two ids of 200 characters, each ':' tripled, plus the engine's words.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+%-]{0,1499}")


def check_key(kind: str, value: object) -> str:
    """A business key as models/keys.py builds it: non-empty, printable, at most 1,500 characters."""
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise InvalidRequest(f"{kind} {value!r} is not a business key (models/keys.py builds them)")
    return value


def check_time(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)
