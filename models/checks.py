"""The rules every entry point applies before anything is written, each stated once: ids, business keys,
times, email addresses, rates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parseaddr

from models.errors import InvalidRequest

# '%' and ':' matter to models/keys.py: '%' is never allowed, so a ':' written as '%3A' is unambiguous.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,199}")


def shown(value: object, limit: int = 120) -> str:
    """A refused value as a message quotes it: its repr cut short (not 100 kB of it), and an int too long
    for str() (Python refuses past 4,300 digits, with a ValueError) described instead."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def check_id(kind: str, value: object) -> str:
    """Organization ids, user ids and idempotency keys: non-empty, printable, at most 200 chars."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{kind} must be a non-empty string, got {shown(value)}")
    if not _ID.fullmatch(value):
        raise InvalidRequest(
            f"{kind} {shown(value)} must be 1-200 characters of letters, digits and _.:@/+- "
            "(starting with a letter or digit)"
        )
    return value


def check_name(kind: str, value: object) -> str:
    """A name the catalog looks up (a plan, pack, action, tier or country): a string, so that the lookup
    answers "unknown" rather than fail on a value that cannot be hashed (a list, Decimal('sNaN'))."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{kind} must be a name (a string), got {shown(value)}")
    return value


# Business keys (models/keys.py) join ids with ':' and write a ':' inside an id as '%3A', so they may hold
# '%' and be longer than an id: two ids of 200 characters, each ':' tripled, plus the engine's words.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+%-]{0,1499}")


def check_key(kind: str, value: object) -> str:
    """A business key as models/keys.py builds it: non-empty, printable, at most 1,500 characters."""
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise InvalidRequest(f"{kind} {shown(value)} is not a business key (models/keys.py builds them)")
    return value


def check_time(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"{name} must be a timezone-aware datetime, got {shown(value)}")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


# A bare address with a dotted domain: what the mailer can send to and Stripe accepts as a customer's email.
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")


def check_email(kind: str, value: object) -> str:
    """An email address as every step that uses it needs it (subscribe, the Stripe customer, the mailer):
    checked before the first effect, so an address no email can go to never gets as far as a charge."""
    if not isinstance(value, str) or not _EMAIL.fullmatch(value) or parseaddr(value) != ("", value):
        raise InvalidRequest(f"{shown(value)} is not an email address: {kind} is a bare address such as "
                             "billing@acme.example")
    return value


def check_rate(kind: str, value: object) -> Decimal:
    """A fraction in [0, 1) as a Decimal (a VAT rate): NaN, infinities and floats are refused typed."""
    if not isinstance(value, Decimal) or not value.is_finite() or not Decimal(0) <= value < 1:
        raise InvalidRequest(f"{kind} is a Decimal fraction in [0, 1), e.g. Decimal('0.20'), got {shown(value)}")
    return value
