"""Tags on a debit or a hold: a small map of dimension to value (campaign, contact, country, result, ...),
stored with the usage row (usage_events.tags, holds.tags) and filtered on by the usage log. The rule is
stated once here; the ledger applies it before anything is written, the log to its filters."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii as _json_string
from typing import cast

from models.checks import shown
from models.errors import InvalidRequest

Tags = Mapping[str, str]

MAX_TAGS = 10
MAX_VALUE_CHARS = 100
# A dimension's name: lower-case, as an identifier, so that two spellings of one dimension never split it.
_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Control characters (Unicode category Cc: NUL, which jsonb refuses, newlines, escapes) and lone surrogates (Cs: no
# UTF-8 for them, the database would refuse the statement): exactly these ranges. One regex search, not a lookup
# per character: this runs on every tagged debit (bench/ledger.py).
_REFUSED_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _ok(key: object, value: object) -> bool:
    """The rule of one tag (the messages of a refusal are _refusal's)."""
    return (isinstance(key, str) and _KEY.fullmatch(key) is not None and isinstance(value, str)
            and 1 <= len(value) <= MAX_VALUE_CHARS and _REFUSED_CHARS.search(value) is None)


def _refusal(what: str, key: object, value: object) -> InvalidRequest:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return InvalidRequest(f"{what}: a tag's name is 1-32 characters of a-z, 0-9 and _ starting with a "
                              f"letter, got {shown(key)}")
    if not isinstance(value, str):
        return InvalidRequest(f"{what}: tag {key!r} must be a string, got {shown(value)}")
    if not 1 <= len(value) <= MAX_VALUE_CHARS:
        return InvalidRequest(f"{what}: tag {key!r} must be 1-{MAX_VALUE_CHARS} characters, got {len(value):,}")
    return InvalidRequest(f"{what}: tag {key!r} holds a control character: {shown(value)}")


def _mapping(what: str, tags: object) -> Mapping[object, object]:
    if not isinstance(tags, Mapping):
        raise InvalidRequest(f"{what} must be a map of names to strings, got {shown(tags)}")
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"{what}: at most {MAX_TAGS} tags, got {len(tags)}")
    return tags


def _check(what: str, tags: object) -> dict[str, str]:
    checked: dict[str, str] = {}
    for key, value in _mapping(what, tags).items():
        if not _ok(key, value):
            raise _refusal(what, key, value)
        assert isinstance(key, str) and isinstance(value, str)
        checked[key] = value
    return dict(sorted(checked.items()))


def check_tags(tags: object) -> dict[str, str] | None:
    """A debit's or hold's tags as stored: None when there are none (None or {}), else a dict sorted by name.
    Bad tags -> InvalidRequest, naming what is wrong."""
    if tags is None:
        return None
    checked = _check("tags", tags)
    return checked or None


def tags_json(tags: object) -> str | None:
    """check_tags, as the JSON text of an object the ledger's functions take for their jsonb argument (None for
    none). Built here, not by json.dumps of check_tags' dict: half the client's cost on every tagged debit's fast
    path (bench/ledger.py). Names need no escaping (a-z, 0-9, _); jsonb keeps its own order of the keys."""
    if tags is None:
        return None
    parts = []
    for key, value in _mapping("tags", tags).items():
        if not _ok(key, value):
            raise _refusal("tags", key, value)
        parts.append(f'"{key}":{_json_string(cast(str, value))}')
    return "{" + ",".join(parts) + "}" if parts else None


def tag_filter(filters: object) -> dict[str, str]:
    """A log's tag filter (every given tag must match), by the same rule as the tags themselves; {} for none."""
    if filters is None:
        return {}
    return _check("tag filter", filters)


def tag_pairs(texts: Sequence[str] | None, *, sep: str, what: str) -> dict[str, str] | None:
    """Tags written as text, `name<sep>value` each (the API's `tag=campaign:spring`, the CLI's
    `--tag campaign=spring`), as a map; None for none. Text without `sep`, or a name given twice, is InvalidRequest
    (`what` names where they came from); the names and values are checked by the rule above where they are used."""
    if not texts:
        return None
    found: dict[str, str] = {}
    for text in texts:
        name, found_sep, value = text.partition(sep)
        if not found_sep:
            raise InvalidRequest(f"{what} must be name{sep}value (campaign{sep}spring), got {shown(text)}")
        if name in found:
            raise InvalidRequest(f"{what} {name!r} is given twice: give each tag once")
        found[name] = value
    return found
