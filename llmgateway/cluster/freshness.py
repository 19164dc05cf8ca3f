"""Every change to a key or a person reaches every replica within a bound, even when its
announcement is lost.

A change is announced once on Redis (tombstone, delete the shared entry, publish). If that fails,
the shared cache would keep the old record for `redis.key_cache_ttl_seconds` and hand it to every
replica. So the reconciliation job compares each shared entry with the store, and drops (and
announces again) every entry that differs, whatever changed: revoked, expiry, models, limits, the
owner disabled or their limits. The version compared is the record itself, as far as admission
reads it, not a counter the writers must remember to bump: a change made by any writer (the
API, the CLI, a script on the store) is seen.

The bound holds for the replicas' own caches too: a replica keeps a key no longer than the shared
entry it came from (the entry carries its expiry), and a key it loaded from the store while Redis
was away or refused it no longer than one reconciliation interval. Hence: a change reaches every
replica within `redis.reconcile_interval_seconds` (plus one run of this job), announced or not.

Cost per run and replica: one scan of the shared key cache and two store reads per person who
has a key in it (their keys, their record), in the store pool.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..records import KeyRecord, UserRecord
from ..store import Store

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger("llmgateway.redis")


def version(record: KeyRecord | None, owner: UserRecord | None, owner_limits: dict[str, float] | None = None) -> Any:
    """What admission reads of a key and its owner: two entries with the same version admit alike."""
    if record is None:
        return None
    disabled = record.owner_disabled if owner is None else owner.disabled
    limits = owner_limits if owner is None else owner.limits
    return (record.id, record.owner, record.active, record.expires, tuple(sorted(record.models)),
            tuple(sorted(record.limits.items())), disabled, tuple(sorted((limits or {}).items())))


def _current(store: Store, owners: set[str]) -> dict[str, tuple[dict[str, KeyRecord], UserRecord | None]]:
    """Per owner: their keys by hash, and their record (blocking: run in the store pool)."""
    return {owner: ({k.hash: k for k in store.list_keys(owner)}, store.get_user(owner)) for owner in owners}


async def repair(gateway: Gateway) -> int:
    """Drop and announce every shared-cache entry that no longer matches the store; how many."""
    shared = gateway.shared
    assert shared is not None
    entries = await shared.cached_identities()
    if not entries:
        return 0
    current = await gateway.in_thread(_current, gateway.store, {record.owner for _, record, _ in entries})
    stale = []
    for key_hash, record, owner_limits in entries:
        keys, owner = current[record.owner]
        stored = keys.get(key_hash)
        if stored is None or version(record, None, owner_limits) != version(stored, owner):
            stale.append(record)
    for record in stale:
        await shared.invalidate("key", record.id, [record.hash])
    if stale:
        log.warning("reconciliation dropped %d shared key-cache entries that no longer matched the store "
                    "(a change whose announcement was lost)", len(stale))
    return len(stale)
