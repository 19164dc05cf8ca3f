"""The production store: MongoDB through pymongo, shared by every replica.

pymongo is blocking, which suits the contract: the gateway runs store calls in its thread pool.
Documents use natural ids (request id, key id, username, lease name) so retries and replays are
idempotent, and every write that must be atomic across replicas is one single-document operation
whose losers see a duplicate-key error.

Raw usage events are not expired by a TTL index (its period is awkward to change once built):
the scheduler's retention job calls `delete_usage_before`. Claims carry an `expires_at` date
with a TTL index (an hour's grace) only as a backstop to `purge_claims`.
"""

from __future__ import annotations

from typing import Any

import pymongo
from pymongo.errors import PyMongoError

from ..base import BUCKETS, StoreError
from .admin_audit import MongoAdminAndAudit
from .connection import mapped_errors
from .keys_people import MongoKeysAndPeople
from .leases_claims import MongoLeasesAndClaims
from .schema import ID, INDEX_OPTIONS, QUERIES, SUPERSEDED, Index, declared_indexes
from .usage import MongoUsage

# `init` gives up on its index work after this long: createIndexes on a replica set with a member
# down can wait for ever, and the pod's start-up probe allows about 60 s.
INIT_TIMEOUT_SECONDS = 30
# Days of per-user rollups derived per step when upgrading a store written before they existed.
BACKFILL_DAYS = 31


class MongoStore(MongoKeysAndPeople, MongoUsage, MongoAdminAndAudit, MongoLeasesAndClaims):
    """MongoDB backend of the `Store` contract: its parts, and the lifecycle of the whole.

    `url` is `mongodb://[user:password@]host[:port][,host...]/[database][?options]` (or
    `mongodb+srv://`); the database defaults to "llmgateway". `client` lets a caller (the tests,
    with mongomock) supply the client; the store then leaves closing it to that caller.
    """

    @mapped_errors
    def init(self) -> None:
        self._ensure_indexes()
        if self._one("daily_users.by_start", {}, {"_id": True}) is None:
            # A store written before the per-user daily rollups existed: derive them from the per-key
            # ones, a month of days at a time.
            days = sorted(self.db.usage_rollups.distinct("start", {"bucket": "day"}))
            for i in range(0, len(days), BACKFILL_DAYS):
                self._rebuild_daily_users(days[i], days[min(i + BACKFILL_DAYS, len(days)) - 1] + BUCKETS["day"])
        if self._one("daily_models.by_start", {}, {"_id": True}) is None:
            # A store written before the per-model daily rollups existed: derive them from the per-user
            # ones, a month of days at a time.
            days = sorted(self.db.usage_daily_users.distinct("start"))
            for i in range(0, len(days), BACKFILL_DAYS):
                self._rebuild_daily_models(days[i], days[min(i + BACKFILL_DAYS, len(days)) - 1] + BUCKETS["day"])

    def _ensure_indexes(self) -> None:
        """Create the missing indexes, apply a changed TTL, drop superseded indexes: within INIT_TIMEOUT_SECONDS.

        Only missing indexes are created, so a start with every index in place sends no createIndexes
        (which on a replica set with a member down can wait for ever); and the whole is bounded by
        the driver's operation timeout, so such a wait ends the start with a message that says so.
        """
        try:
            with pymongo.timeout(INIT_TIMEOUT_SECONDS):
                for collection, indexes in declared_indexes().items():
                    self._ensure_collection_indexes(collection, indexes)
        except PyMongoError as exc:
            if not exc.timeout:
                raise
            cause = self.error(exc).args[0].removeprefix(f"MongoDB store {self.where}: ")
            raise StoreError(
                f"MongoDB store {self.where}: creating or checking indexes did not finish within "
                f"{INIT_TIMEOUT_SECONDS} s (is a replica-set member down, or an index build still running?): {cause}"
            ) from None

    def _ensure_collection_indexes(self, collection: str, indexes: list[Index]) -> None:
        """One collection's part of `_ensure_indexes`."""
        existing = {_index_key(info["key"]): info for info in self.db[collection].index_information().values()}
        for keys in indexes:
            options = INDEX_OPTIONS.get((collection, keys), {})
            found = existing.get(keys)
            if found is None:
                self.db[collection].create_index(list(keys), **options)
            elif "expireAfterSeconds" in options and found.get("expireAfterSeconds") != options["expireAfterSeconds"]:
                # createIndexes refuses changed options on an existing index (IndexOptionsConflict);
                # collMod changes a TTL in place.
                self.db.command({"collMod": collection, "index": {"keyPattern": dict(keys),
                                                                  "expireAfterSeconds": options["expireAfterSeconds"]}})
        for keys in SUPERSEDED.get(collection, ()):
            if keys in existing:
                self.db[collection].drop_index(list(keys))

    @mapped_errors
    def ping(self) -> None:
        self.db.command("ping")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _index_key(key: Any) -> Index:
    """An index's key as listIndexes reports it ((field, direction) pairs), in the form of `Index`."""
    pairs = key.items() if isinstance(key, dict) else key
    return tuple((name, int(direction)) for name, direction in pairs)


__all__ = ["ID", "INDEX_OPTIONS", "QUERIES", "SUPERSEDED", "Index", "MongoStore", "declared_indexes"]
