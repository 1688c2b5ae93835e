"""API keys with scopes, stored hashed.

Scopes: ``admin`` (everything), ``ingest:DATASET`` (load, delete, job status, rows and row updates of
one dataset), ``read:VIEW`` (pull one view and follow its events), ``read:DATASET`` (read one
dataset's rows). A key is 32 random bytes, so a fast hash (SHA-256) is enough to store it: there is
nothing to brute-force that a slow hash would protect.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .columns import utc_now
from .errors import Forbidden, Invalid, NotFound, Unauthorized
from .storage import Store
from .storage.schema import keys as keys_table

__all__ = ["Principal", "create_key", "authenticate", "list_keys", "revoke_key", "validate_scope"]

_SCOPE = re.compile(r"^(admin|(ingest|read):[A-Za-z_][A-Za-z0-9_]{0,62})$")
_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, *scopes: str) -> bool:
        return self.is_admin or any(s in self.scopes for s in scopes)

    def require(self, *scopes: str) -> None:
        """Pass if the key is admin or holds any of ``scopes``; else 403 naming what is needed."""
        if not self.allows(*scopes):
            needed = " or ".join(scopes) if scopes else "admin"
            raise Forbidden(f"this key lacks the scope {needed}", details={"needed": list(scopes) or ["admin"]})

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this key lacks the scope admin", details={"needed": ["admin"]})


def validate_scope(scope: str) -> str:
    if not isinstance(scope, str) or not _SCOPE.match(scope):
        raise Invalid(f"scope {scope!r} is not one of admin, ingest:DATASET, read:NAME", code="invalid_scope")
    return scope


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store: Store, name: str, scopes: list[str]) -> tuple[str, dict[str, Any]]:
    if not name or not isinstance(name, str):
        raise Invalid("a key needs a name", code="invalid_key")
    if not scopes:
        raise Invalid("a key needs at least one scope", code="invalid_key")
    scopes = [validate_scope(s) for s in scopes]
    key = "pb_" + secrets.token_urlsafe(32)
    with store.write() as conn:
        key_id = conn.execute(
            keys_table.insert().values(name=name, prefix=key[:8], hash=_hash(key), scopes=scopes, created_at=utc_now())
        ).inserted_primary_key[0]
    return key, {"id": key_id, "name": name, "prefix": key[:8], "scopes": scopes}


def list_keys(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(sa.select(keys_table).order_by(keys_table.c.id)).all()
    return [
        {"id": r.id, "name": r.name, "prefix": r.prefix, "scopes": r.scopes, "created_at": r.created_at.isoformat(),
         "revoked": r.revoked_at is not None}
        for r in rows
    ]


def revoke_key(store: Store, key_id: int) -> None:
    with store.write() as conn:
        done = conn.execute(keys_table.update().where(keys_table.c.id == key_id).values(revoked_at=utc_now())).rowcount
    if not done:
        raise NotFound(f"key #{key_id} does not exist")
    _cache_for(store).clear()


def has_keys(store: Store) -> bool:
    with store.read() as conn:
        return conn.execute(sa.select(keys_table.c.id).limit(1)).first() is not None


class _KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        with self._lock:
            entry = self._entries.get(digest)
        if entry and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def put(self, digest: str, principal: Principal | None) -> None:
        with self._lock:
            if len(self._entries) > 10000:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + _CACHE_SECONDS, principal)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _cache_for(store: Store) -> _KeyCache:
    cache = getattr(store, "_key_cache", None)
    if cache is None:
        cache = _KeyCache()
        store._key_cache = cache  # type: ignore[attr-defined]
    return cache


def authenticate(store: Store, key: str | None) -> Principal:
    """The key's principal (401 when missing, unknown or revoked); reads the database on a cache miss."""
    found = cached_principal(store, key)
    if found is not None:
        return found
    assert key is not None  # cached_principal refused a missing one
    digest = _hash(key)
    with store.read() as conn:
        row = conn.execute(sa.select(keys_table).where(keys_table.c.hash == digest)).first()
    principal = None if row is None or row.revoked_at is not None else Principal(row.id, row.name, frozenset(row.scopes))
    _cache_for(store).put(digest, principal)
    return _valid(principal)


def cached_principal(store: Store, key: str | None) -> Principal | None:
    """Like ``authenticate`` for a key seen lately, without touching the database (so the API can check
    it on the event loop, with no thread hand-off); None when the database must be asked."""
    if not key:
        raise Unauthorized("send your API key in the x-api-key header", code="missing_key")
    hit, principal = _cache_for(store).get(_hash(key))
    return _valid(principal) if hit else None


def _valid(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized("the API key is not valid", code="invalid_key")
    return principal
