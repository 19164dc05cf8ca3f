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
from collections import OrderedDict
from dataclasses import dataclass

from ..records import KeyRecord

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
    record: KeyRecord
    until: float
    owner_limits: dict[str, float]


class KeyCache:
    """Key hash -> record, with a TTL, and unknown key hashes (the negative cache): both bounded.

    The steady state makes no store round trip; revocation through this process drops the entry
    at once, and other replicas see it within the TTL (at once through Redis). `generation` counts
    invalidations, so a lookup that raced one is not cached.

    Both maps are LRU-bounded (`keys.cache_max_entries`, `keys.negative_max_entries`), so memory
    stays flat however many keys are used or tried; a flood of made-up keys costs one store query
    per distinct key and then none until it falls out of the negative cache. Unknown keys live
    apart from known ones so that such a flood never evicts the keys of real callers.
    """

    def __init__(self, ttl: float, negative_ttl: float, max_entries: int = 100_000,
                 max_negative: int = 100_000) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.max_negative = max_negative
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self.generation = 0

    def get(self, key_hash: str, now: float) -> tuple[bool, KeyRecord | None, dict[str, float]]:
        """(found, record, owner's limits): found is False when the store must be asked."""
        entry = self._entries.get(key_hash)
        if entry is not None:
            if entry.until <= now:
                del self._entries[key_hash]
                return False, None, {}
            if not hmac.compare_digest(entry.record.hash, key_hash):
                return False, None, {}
            self._entries.move_to_end(key_hash)
            return True, entry.record, entry.owner_limits
        until = self._unknown.get(key_hash)
        if until is None:
            return False, None, {}
        if until <= now:
            del self._unknown[key_hash]
            return False, None, {}
        return True, None, {}

    def put(self, key_hash: str, record: KeyRecord | None, now: float, owner_limits: dict[str, float],
            until: float | None = None) -> None:
        """Remember a lookup; a known key for `keys.cache_ttl_seconds`, or until `until` if that is
        sooner (the end of the shared-cache entry it came from, see `freshness`)."""
        if record is None:
            self._unknown[key_hash] = now + self.negative_ttl
            self._unknown.move_to_end(key_hash)
            while len(self._unknown) > self.max_negative:
                self._unknown.popitem(last=False)
            return
        expiry = now + self.ttl if until is None else min(now + self.ttl, until)
        self._entries[key_hash] = _Entry(record, expiry, owner_limits)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop_owner(self, owner: str) -> None:
        self.generation += 1
        for key_hash in [h for h, e in self._entries.items() if e.record.owner == owner]:
            del self._entries[key_hash]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._unknown.clear()

    def drop_key_id(self, key_id: str) -> None:
        self.generation += 1
        for key_hash in [h for h, e in self._entries.items() if e.record.id == key_id]:
            del self._entries[key_hash]
