"""API keys: made random, shown once, stored as a SHA-256 hash, cached in-process.

Keys carry 256 bits of randomness, so a single unsalted SHA-256 is enough to make the stored
hash useless to an attacker (as with JupyterHub's and GitHub's tokens) while keeping lookup a
single indexed read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from .records import KeyRecord

KEY_PREFIX = "sk-lgw-"
PREFIX_SHOWN = len(KEY_PREFIX) + 6
KEY_PATTERN = re.compile(r"^sk-lgw-[A-Za-z0-9_-]{43}$")


def new_key() -> str:
    """A fresh API key: recognisable prefix plus 32 random bytes."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_record(
    owner: str, name: str, models: list[str] | None = None, expires_days: float | None = None
) -> tuple[str, KeyRecord]:
    """Create a key and its record; the key is returned once and never stored."""
    if not owner.strip():
        raise ValueError("user must not be empty")
    if not name.strip():
        raise ValueError("name must not be empty")
    if expires_days is not None and expires_days <= 0:
        raise ValueError("expiry must be a positive number of days")
    key = new_key()
    now = time.time()
    record = KeyRecord(
        id="key_" + secrets.token_hex(8),
        owner=owner.strip(),
        name=name.strip(),
        hash=hash_key(key),
        prefix=key[:PREFIX_SHOWN],
        created=now,
        expires=now + expires_days * 86400 if expires_days is not None else None,
        models=sorted(set(models or [])),
    )
    return key, record


def bearer_key(header: str | None) -> str | None:
    """The key from an `Authorization: Bearer ...` header, or None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


@dataclass
class _Entry:
    record: KeyRecord | None
    until: float
    owner_limits: dict[str, float]


class KeyCache:
    """Key hash -> record, with a TTL for hits and a shorter one for misses (negative cache).

    The steady state makes no store round trip; revocation through this process drops the entry
    at once, and other replicas see it within the TTL (at once through Redis). `generation` counts
    invalidations, so a lookup that raced one is not cached.
    """

    def __init__(self, ttl: float, negative_ttl: float) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._entries: dict[str, _Entry] = {}
        self.generation = 0

    def get(self, key_hash: str, now: float) -> tuple[bool, KeyRecord | None, dict[str, float]]:
        """(found, record, owner's limits): found is False when the store must be asked."""
        entry = self._entries.get(key_hash)
        if entry is None or entry.until <= now:
            return False, None, {}
        if entry.record is not None and not hmac.compare_digest(entry.record.hash, key_hash):
            return False, None, {}
        return True, entry.record, entry.owner_limits

    def put(self, key_hash: str, record: KeyRecord | None, now: float, owner_limits: dict[str, float]) -> None:
        if len(self._entries) > 100_000:
            self._entries = {h: e for h, e in self._entries.items() if e.until > now}
        ttl = self.ttl if record is not None else self.negative_ttl
        self._entries[key_hash] = _Entry(record, now + ttl, owner_limits)

    def drop_owner(self, owner: str) -> None:
        self.generation += 1
        for key_hash, entry in list(self._entries.items()):
            if entry.record is not None and entry.record.owner == owner:
                del self._entries[key_hash]

    def clear(self) -> None:
        self.generation += 1
        self._entries = {}

    def drop_key_id(self, key_id: str) -> None:
        self.generation += 1
        for key_hash, entry in list(self._entries.items()):
            if entry.record is not None and entry.record.id == key_id:
                del self._entries[key_hash]
