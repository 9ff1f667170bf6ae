"""API keys: random secrets shown once and stored as their SHA-256, with their role and reach
(models/api_types.py says who reaches what).

SHA-256, not a slow password hash: a secret is 256 random bits, so nothing can be guessed from its hash, and
checking a key must cost microseconds on every request (a debit through HTTP stays one database round trip).
Authentication is served from an in-process cache for KEY_CACHE_SECONDS: a key revoked through this process
stops at once; one revoked through another server process stops within that time.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.pool import LeanPool
from models.api_types import ApiKey, NewKey, Role, check_new_key
from models.checks import check_id, shown
from models.errors import InvalidRequest, NotAuthenticated, UnknownApiKey

SECRET_PREFIX = "bk_"
KEY_CACHE_SECONDS = 10.0
_CACHE_LIMIT = 100_000  # distinct live keys cached; past it the cache starts over (bounded memory)
_COLUMNS = "id, role, org_id, user_id, prefix, name, created_at, revoked_at, created_by"


def _sha(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(*row)


class ApiKeys:
    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool
        self._cache: dict[bytes, tuple[float, ApiKey]] = {}

    async def create(self, *, role: object, org_id: object = None, user_id: object = None, name: str = "",
                     creator: ApiKey | None = None, now: datetime) -> NewKey:
        """A new key (refused typed, before anything is written, where `creator` may not make it)."""
        role_, org, user = check_new_key(creator, role, org_id, user_id)
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidRequest(f"name is at most 200 characters, got {shown(name)}")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        row = await self.pool.fetchone(
            f"INSERT INTO api_keys (id, secret_sha, prefix, role, org_id, user_id, name, created_by, created_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (key_id, _sha(secret), secret[:10], role_, org, user, name, creator.id if creator else None, now))
        assert row is not None
        return NewKey(_key(row), secret)

    async def authenticate(self, secret: str | None) -> ApiKey:
        """The live key whose secret this is, else NotAuthenticated (the same answer for a missing, unknown or
        revoked key: nothing to learn from it)."""
        if not secret or not secret.startswith(SECRET_PREFIX) or len(secret) > 100:
            raise NotAuthenticated("a valid API key is required: Authorization: Bearer bk_...")
        sha = _sha(secret)
        now = time.monotonic()
        cached = self._cache.get(sha)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self.pool.fetchone(
            f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha = %s AND revoked_at IS NULL", (sha,))
        if row is None:
            self._cache.pop(sha, None)
            raise NotAuthenticated("this API key is unknown or revoked")
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        key = _key(row)
        self._cache[sha] = (now + KEY_CACHE_SECONDS, key)
        return key

    async def list(self, *, org_id: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
        """Keys oldest first: an organization's, or (org_id None) every key."""
        where = ["TRUE"]
        params: list[Any] = []
        if org_id is not None:
            where.append("org_id = %s")
            params.append(check_id("org_id", org_id))
        if not include_revoked:
            where.append("revoked_at IS NULL")
        rows = await self.pool.fetchall(
            f"SELECT {_COLUMNS} FROM api_keys WHERE {' AND '.join(where)} ORDER BY created_at, id", tuple(params))
        return [_key(r) for r in rows]

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self.pool.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))
        return _key(row) if row else None

    async def revoke(self, key_id: str, *, now: datetime, by: ApiKey | None = None) -> ApiKey:
        """Revoke a key (a repeat answers as the first). `by` may revoke only keys it could create; any other
        key, like one that does not exist, is UnknownApiKey (404)."""
        key = await self.get(key_id) if isinstance(key_id, str) else None
        if key is None or (by is not None and not _may_manage(by, key)):
            raise UnknownApiKey(shown(key_id))
        row = await self.pool.fetchone(
            f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s RETURNING {_COLUMNS}",
            (now, key_id))
        assert row is not None
        self._cache = {sha: entry for sha, entry in self._cache.items() if entry[1].id != key_id}
        return _key(row)


async def first_platform_key(keys: ApiKeys, key_file: Path, now: datetime) -> str:
    """The development main command's platform key: the one it wrote to `key_file` while still live, else a new
    one (written there, readable by this user only, since the database keeps only its hash)."""
    secret = await asyncio.to_thread(_read, key_file)
    if secret:
        try:
            await keys.authenticate(secret)
            return secret
        except NotAuthenticated:
            pass  # revoked, or another database: make a new one
    new = await keys.create(role="platform", name="main command", now=now)
    await asyncio.to_thread(_write, key_file, new.secret)
    return new.secret


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _write(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")


def _may_manage(by: ApiKey, key: ApiKey) -> bool:
    if by.role == "platform":
        return True
    if by.role == "admin":
        return key.org_id == by.org_id and key.role != "platform"
    return False


__all__ = ["ApiKey", "ApiKeys", "NewKey", "Role", "UnknownApiKey"]
