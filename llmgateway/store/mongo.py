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

import functools
import heapq
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.errors import AutoReconnect, BulkWriteError, DuplicateKeyError, PyMongoError

from ..records import AdminToken, AuditEntry, KeyRecord, ModelRecord, UsageEvent, UserRecord
from .base import (
    BUCKETS,
    GROUPS,
    HOLD_FIELDS,
    KEY_CHANGES,
    KEY_STATUSES,
    REPORT_ORDERS,
    USER_CHANGES,
    BudgetHold,
    DailyRow,
    RollupRow,
    StoreError,
    UsageRow,
    UsageTotals,
)

DEFAULT_DATABASE = "llmgateway"
# Client options the store sets unless the URL sets them (the URL wins, option by option):
# - serverSelectionTimeoutMS: how long a call waits for a usable server (a primary to write to);
#   the ledger's flush at shutdown must give up within the pod's grace period, so 5 s.
# - connectTimeoutMS: a host that does not accept the connection is given up on quickly.
# - socketTimeoutMS: a reply that never comes (a half-open connection after a node vanished)
#   fails the call instead of blocking a store thread for ever; longer than any single reply.
# - retryWrites / retryReads: said explicitly (they are the driver's defaults): one retry of a
#   single-document write or a read after a failover or a network error.
# - w=majority with wtimeoutMS: a write counts only once a majority holds it, so a failover
#   cannot roll back usage the ledger believed written; a majority that does not answer within
#   5 s is a failure (the ledger spools), not a wait.
# When the URL sets timeoutMS (the driver's one operation timeout), the per-socket and
# write-concern timeouts are left to it.
CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "socketTimeoutMS": 30000,
    "retryWrites": True,
    "retryReads": True,
    "w": "majority",
    "wTimeoutMS": 5000,
}
LEFT_TO_TIMEOUT_MS = ("socketTimeoutMS", "wTimeoutMS")
# `init` gives up on its index work after this long: createIndexes on a replica set with a member
# down can wait for ever, and the pod's start-up probe allows about 60 s.
INIT_TIMEOUT_SECONDS = 30
DUPLICATE_KEY = 11000
# Concurrent upserts of one new _id: one of them may lose with a duplicate-key error, and its retry
# then finds the row and updates it.
UPSERT_ATTEMPTS = 3
# Writes of many documents go in commands of at most this many (every command stays far below
# MongoDB's 16 MiB document limit whatever the range).
WRITE_BATCH = 10_000
# Offsets beyond this are read as a range from the offset's key (see `_seek`), not skipped.
DEEP_OFFSET = 1_000
# The claims TTL index is a backstop for a stopped purge job, so it waits this long past expiry.
# Changing it needs no rebuild: `init` applies a new value with collMod.
CLAIM_TTL_GRACE_SECONDS = 3600
# Budget holds take a short lock per budget counter (a lease document): MongoDB has no
# multi-document atomicity without a replica set, and a hold reads many events, then writes.
HOLD_LOCK_SECONDS = 5.0
HOLD_LOCK_WAIT_SECONDS = 5.0
ROLLUP_KEY = ("bucket", "start", "user", "key_id", "model")
USER_FIELDS = tuple(f.name for f in fields(UserRecord) if f.name != "username")
# `owner_disabled` is the owner's state, filled in by the gateway: never stored with the key.
KEY_FIELDS = tuple(f.name for f in fields(KeyRecord) if f.name not in ("id", "owner_disabled"))
TOKEN_FIELDS = tuple(f.name for f in fields(AdminToken) if f.name != "id")
AUDIT_FIELDS = tuple(f.name for f in fields(AuditEntry) if f.name != "id")
DAILY_USER_KEY = ("start", "user", "model")
DAILY_MODEL_KEY = ("start", "model")
# Days of per-user rollups derived per step when upgrading a store written before they existed.
BACKFILL_DAYS = 31
SUM_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost", "estimated")
# Sums of rollup rows (already sums of events).
ROLLUP_SUMS = {name: {"$sum": f"${name}"} for name in SUM_FIELDS}
# The field a usage report groups rollup rows by; raw events group by the same field, or by their day.
REPORT_FIELD = {"user": "user", "key": "key_id", "model": "model", "day": "start"}
SUMS = {
    "requests": {"$sum": 1},
    "prompt_tokens": {"$sum": "$prompt_tokens"},
    "completion_tokens": {"$sum": "$completion_tokens"},
    "cost": {"$sum": "$cost"},
    "estimated": {"$sum": {"$cond": ["$estimated", 1, 0]}},
}

Index = tuple[tuple[str, int], ...]
ID: Index = (("_id", ASCENDING),)
NEWEST_KEYS: Index = (("created", DESCENDING), ("_id", ASCENDING))
OLDEST_KEYS: Index = (("created", ASCENDING), ("_id", ASCENDING))
NEWEST_EVENTS: Index = (("ts", DESCENDING), ("_id", ASCENDING))
OLDEST_EVENTS: Index = (("ts", ASCENDING), ("_id", ASCENDING))
NEWEST_AUDIT: Index = (("ts", DESCENDING), ("_id", DESCENDING))
ROLLUP_ORDER: Index = tuple((name, ASCENDING) for name in ROLLUP_KEY[1:])


@dataclass(frozen=True)
class Shape:
    """A query the store runs: its collection, the index it is hinted to, its order, and why that index.

    `reads_documents` names the filter fields the index cannot hold, tested on fetched documents
    by choice (say why in `why`); every other filter field is bounded by the index or tested on its keys.
    """

    collection: str
    index: Index
    why: str
    sort: Index = ()
    reads_documents: tuple[str, ...] = ()


# Every query the store runs, by name, with the index that serves it. `init` creates exactly these
# indexes (with INDEX_OPTIONS), reads are hinted to them, and tests/test_store_mongo_faults.py
# fails for a query the store runs that no index here serves. The README's query table is this one.
QUERIES: dict[str, Shape] = {
    "keys.by_id": Shape("api_keys", ID, "equality on _id: one key (get, revoke, update, touch)"),
    "keys.by_hash": Shape("api_keys", (("hash", ASCENDING),), "equality on the unique hash: every API call's key"),
    "keys.of_owner": Shape(
        "api_keys", (("owner", ASCENDING), *OLDEST_KEYS), "owner equality, then the index's order: a person's "
        "keys, oldest first, no sort stage (active_only is checked on those few documents)", OLDEST_KEYS),
    "keys.all": Shape("api_keys", OLDEST_KEYS, "every key, oldest first, in index order (the CLI's listing)",
                      OLDEST_KEYS),
    "keys.page": Shape(
        "api_keys", (*NEWEST_KEYS, ("active", ASCENDING), ("expires", ASCENDING), ("name", ASCENDING),
                     ("prefix", ASCENDING)),
        "the admin key list without an owner: walks newest first and stops at the page; status and "
        "search are tested on the index keys (every field they read is in the index), so counts and "
        "deep pages read no document; `model` alone reads documents (an array would make the index "
        "multikey, which cannot cover a query)", NEWEST_KEYS, ("models",)),
    "keys.page_of_owner": Shape(
        "api_keys", (("owner", ASCENDING), *NEWEST_KEYS), "one person's keys newest first: owner equality, "
        "then the index's order", NEWEST_KEYS),
    "users.by_id": Shape("users", ID, "equality on _id (username); list_users walks it in order", ID),
    "users.page": Shape(
        "users", (("_id", ASCENDING), ("display_name", ASCENDING), ("email", ASCENDING), ("is_admin", ASCENDING),
                  ("admin_granted", ASCENDING), ("disabled", ASCENDING)),
        "the admin user list by username: search, role and status are tested on the index keys, so a "
        "search reads only the (narrow) index, and documents only for the page", ID),
    "events.by_id": Shape("usage_events", ID, "equality on _id (the request id): which held calls' events are "
                          "stored already"),
    "events.by_ts": Shape(
        "usage_events", OLDEST_EVENTS, "a ts range without user, key or model: rollup rebuilds, reports' "
        "live part, usage_events() in order, retention's delete", OLDEST_EVENTS),
    "events.newest": Shape("usage_events", NEWEST_EVENTS, "the admin event list without user or key, newest "
                           "first, stops at the page", NEWEST_EVENTS),
    "events.of_user": Shape(
        "usage_events", (("user", ASCENDING), *NEWEST_EVENTS), "user equality then ts: one person's events "
        "newest first (page), or a ts range of them (sums)", NEWEST_EVENTS),
    "events.of_key": Shape(
        "usage_events", (("key_id", ASCENDING), *NEWEST_EVENTS), "key equality then ts: one key's events "
        "(a user filter as well is checked on those documents: a key has one owner)", NEWEST_EVENTS),
    "events.of_model": Shape("usage_events", (("model", ASCENDING), ("ts", ASCENDING)),
                             "model equality then a ts range: sums of one model"),
    "rollups.by_start": Shape(
        "usage_rollups", tuple((name, ASCENDING) for name in ROLLUP_KEY), "the unique row key: bucket "
        "equality then a start range, in the rows' order; rebuilds upsert by _id and delete by it", ROLLUP_ORDER),
    "rollups.of_key": Shape(
        "usage_rollups", (("bucket", ASCENDING), ("key_id", ASCENDING), ("start", ASCENDING), ("user", ASCENDING),
                          ("model", ASCENDING)),
        "bucket and key equality, then start: one key's rows in order", ROLLUP_ORDER),
    "rollups.of_user": Shape(
        "usage_rollups", (("bucket", ASCENDING), ("user", ASCENDING), ("start", ASCENDING), ("key_id", ASCENDING),
                          ("model", ASCENDING)),
        "bucket and user equality, then start: one person's rows in order", ROLLUP_ORDER),
    "daily_users.by_start": Shape(
        "usage_daily_users", tuple((name, ASCENDING) for name in DAILY_USER_KEY),
        "the unique row key: a start range (reports by user, rebuilds)"),
    "daily_users.of_user": Shape("usage_daily_users", (("user", ASCENDING), ("start", ASCENDING)),
                                 "user equality then a start range: one person's report"),
    "daily_models.by_start": Shape("usage_daily_models", tuple((name, ASCENDING) for name in DAILY_MODEL_KEY),
                                   "the unique row key: a start range (reports by day or model)"),
    "tokens.by_id": Shape("admin_tokens", ID, "equality on _id"),
    "tokens.by_hash": Shape("admin_tokens", (("hash", ASCENDING),), "equality on the unique hash"),
    "tokens.newest": Shape("admin_tokens", NEWEST_KEYS, "every token newest first, in index order", NEWEST_KEYS),
    "audit.page": Shape(
        "audit_log", (("ts", ASCENDING), ("_id", ASCENDING), ("action", ASCENDING), ("via", ASCENDING)),
        "the audit list without actor or target: walked backwards (newest first), stops at the page; "
        "the action prefix and `via` are tested on the index keys", NEWEST_AUDIT),
    "audit.of_actor": Shape("audit_log", (("actor", ASCENDING), ("ts", ASCENDING), ("_id", ASCENDING)),
                            "actor equality, then the list's order backwards", NEWEST_AUDIT),
    "audit.of_target": Shape("audit_log", (("target", ASCENDING), ("ts", ASCENDING), ("_id", ASCENDING)),
                             "target equality, then the list's order backwards", NEWEST_AUDIT),
    "models.by_id": Shape("models", ID, "equality on _id; the catalog walks it in order", ID),
    "leases.by_id": Shape("leases", ID, "equality on _id (the lease's name)"),
    "claims.by_id": Shape("claims", ID, "equality on _id (namespace and item)"),
    "claims.expired": Shape("claims", (("expires", ASCENDING),), "purge: a range on expires"),
    "claims.ttl": Shape("claims", (("expires_at", ASCENDING),), "the server's TTL monitor (a backstop to purge)"),
    "holds.of_counters": Shape("budget_holds", (("counter", ASCENDING), ("expires", ASCENDING)),
                               "counter equality then an expires range: the live holds of the budgets a "
                               "reservation checks, while Redis is away"),
    "holds.live": Shape("budget_holds", (("expires", ASCENDING),), "an expires range: every live hold "
                        "(reconciliation after an outage), and purge's delete of expired ones"),
    "holds.of_request": Shape("budget_holds", (("request_id", ASCENDING),), "request id equality: a call's "
                              "holds, released when it produced no event"),
}
INDEX_OPTIONS: dict[tuple[str, Index], dict[str, Any]] = {
    ("api_keys", QUERIES["keys.by_hash"].index): {"unique": True},
    ("usage_rollups", QUERIES["rollups.by_start"].index): {"unique": True},
    ("usage_daily_users", QUERIES["daily_users.by_start"].index): {"unique": True},
    ("usage_daily_models", QUERIES["daily_models.by_start"].index): {"unique": True},
    ("admin_tokens", QUERIES["tokens.by_hash"].index): {"unique": True},
    ("claims", QUERIES["claims.ttl"].index): {"expireAfterSeconds": CLAIM_TTL_GRACE_SECONDS},
}
# Indexes of earlier releases that a wider one above now serves; `init` drops them, since each
# costs every write and no query uses it.
SUPERSEDED: dict[str, tuple[Index, ...]] = {
    "api_keys": ((("owner", ASCENDING), ("created", ASCENDING)), NEWEST_KEYS),
    "usage_events": ((("ts", ASCENDING),), (("user", ASCENDING), ("ts", ASCENDING)),
                     (("key_id", ASCENDING), ("ts", ASCENDING))),
    "usage_rollups": ((("bucket", ASCENDING), ("key_id", ASCENDING), ("start", ASCENDING)),
                      (("bucket", ASCENDING), ("user", ASCENDING), ("start", ASCENDING))),
    "admin_tokens": ((("created", DESCENDING),),),
    "audit_log": (OLDEST_EVENTS, (("actor", ASCENDING), ("ts", ASCENDING)), (("target", ASCENDING), ("ts", ASCENDING)),
                  (("action", ASCENDING), ("ts", ASCENDING))),
}


def declared_indexes() -> dict[str, list[Index]]:
    """The secondary indexes `init` creates, per collection: those of QUERIES (the _id index always exists)."""
    found: dict[str, list[Index]] = {}
    for shape in QUERIES.values():
        wanted = found.setdefault(shape.collection, [])
        if shape.index != ID and shape.index not in wanted:
            wanted.append(shape.index)
    return found


# A call failed for a reason another try may not meet: a failover, a lost connection.
TRANSIENT = (AutoReconnect,)

P = ParamSpec("P")
R = TypeVar("R")


class ChangeRefused(ValueError):
    """An admin change names a field that may not change (the contract's ValueError)."""


def _mapped(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any failure of `method` into a StoreError whose message carries no credentials.

    Not only pymongo's errors: bson raises InvalidDocument (a document over 16 MiB) and
    OverflowError (an integer past 64 bits) outside PyMongoError, and a caller such as the usage
    ledger must see every failure as the store's. A refused change stays a ValueError.
    """

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (StoreError, ChangeRefused):
            raise
        except Exception as exc:
            store: MongoStore = args[0]  # type: ignore[assignment]
            raise store.error(exc) from None

    return call


def _retry_once(call: Callable[[], R]) -> R:
    """Run an idempotent write that the driver does not retry itself (a multi-document delete),
    again once after a transient failure."""
    try:
        return call()
    except TRANSIENT:
        return call()
    except PyMongoError as exc:
        if not exc.has_error_label("RetryableWriteError"):
            raise
        return call()


class MongoStore:
    """MongoDB backend of the `Store` contract.

    `url` is `mongodb://[user:password@]host[:port][,host...]/[database][?options]` (or
    `mongodb+srv://`); the database defaults to "llmgateway". `client` lets a caller (the tests,
    with mongomock) supply the client; the store then leaves closing it to that caller.
    """

    def __init__(self, url: str, client: MongoClient | None = None, database: str | None = None) -> None:
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        password = userinfo.partition(":")[2]
        # Longest first, so the whole user-info goes before the password inside it.
        self._secrets = sorted({userinfo, unquote(userinfo), password, unquote(password)} - {""}, key=len, reverse=True)
        name = database or unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
        self.where = f"{hosts}/{name}"
        self._owns_client = client is None
        if client is None:
            try:
                client = MongoClient(url, **client_options(parts.query))
            except Exception as exc:
                raise self.error(exc) from None
        self.client = client
        self.db: Database = client[name]

    def error(self, exc: BaseException) -> StoreError:
        """A StoreError for `exc`, with anything from the URL's user-info part blotted out."""
        message = str(exc)
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StoreError(f"MongoDB store {self.where}: {type(exc).__name__}: {message}")

    def _find(self, shape: str, query: dict[str, Any], projection: dict[str, Any] | None = None) -> Cursor:
        """A cursor for the query shape `shape`, hinted to its index and in its order."""
        found = QUERIES[shape]
        cursor = self.db[found.collection].find(query, projection).hint(list(found.index))
        return cursor.sort(list(found.sort)) if found.sort else cursor

    def _one(self, shape: str, query: dict[str, Any], projection: dict[str, Any] | None = None,
             skip: int = 0) -> dict[str, Any] | None:
        """The first document of the shape's order that matches (after `skip` of them), or None."""
        return next(iter(self._find(shape, query, projection).skip(skip).limit(1)), None)

    def _count(self, shape: str, query: dict[str, Any]) -> int:
        """How many documents match: the collection's metadata count when nothing filters (no scan at all),
        else a count hinted to the shape's index."""
        found = QUERIES[shape]
        collection = self.db[found.collection]
        if not query:
            return collection.estimated_document_count()
        return collection.count_documents(query, hint=list(found.index))

    def _aggregate(self, shape: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run `pipeline` (its first stage a $match of the shape) hinted to the shape's index."""
        found = QUERIES[shape]
        return list(self.db[found.collection].aggregate(pipeline, hint=list(found.index), allowDiskUse=True))

    def _page(self, shape: str, query: dict[str, Any], offset: int,
              limit: int | None) -> tuple[list[dict[str, Any]], int]:
        """One page of the shape's order, and how many match in all.

        A deep offset becomes a range (`_seek`). The count is left out when the page itself tells it
        (a short page ends the list), so a rare search walks the index once, not twice.
        """
        if limit is not None and limit <= 0:
            return [], self._count(shape, query)
        offset = max(offset, 0)
        ranged, skip = (query, offset) if offset <= DEEP_OFFSET else self._seek(shape, query, offset)
        page: list[dict[str, Any]] = []
        if ranged is not None:
            cursor = self._find(shape, ranged).skip(skip)
            page = list(cursor.limit(limit) if limit is not None else cursor)
        if (page or offset == 0) and (limit is None or len(page) < limit):
            return page, offset + len(page)
        return page, self._count(shape, query)

    def _seek(self, shape: str, query: dict[str, Any], offset: int) -> tuple[dict[str, Any] | None, int]:
        """The query from the `offset`-th entry of the shape's order on, and how many entries to skip there.

        The entry is found by skipping over index keys alone (the projection holds only the sort
        fields, which the index holds: a covered read, no document fetched); the page is then a
        range read from its sort key. Entries tied with it on the first sort field that come before
        it are counted (a range count) and skipped. None if the offset is past the end.
        """
        order = QUERIES[shape].sort
        projection = {name: True for name, _ in order} | ({} if order[0][0] == "_id" or order[-1][0] == "_id"
                                                           else {"_id": False})
        boundary = self._one(shape, query, projection, offset)
        if boundary is None:
            return None, 0
        (first, direction), rest = order[0], order[1:]
        ranged = _all_of([query, {first: {"$lte" if direction < 0 else "$gte": boundary[first]}}])
        if not rest:
            return ranged, 0
        (second, then), = rest
        before = {first: boundary[first], second: {"$lt" if then > 0 else "$gt": boundary[second]}}
        return ranged, self._count(shape, _all_of([query, before]))

    @_mapped
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

    @_mapped
    def ping(self) -> None:
        self.db.command("ping")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    @_mapped
    def insert_key(self, record: KeyRecord) -> None:
        self._ensure_user(record.owner, {})
        document = {name: getattr(record, name) for name in KEY_FIELDS}
        document["_id"] = record.id
        self.db.api_keys.insert_one(document)

    @_mapped
    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return _key(self._one("keys.by_hash", {"hash": key_hash}))

    @_mapped
    def list_keys(self, owner: str | None = None, active_only: bool = False) -> list[KeyRecord]:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if active_only:
            query["active"] = True
        return [_key(d) for d in self._find("keys.all" if owner is None else "keys.of_owner", query)]

    @_mapped
    def revoke_key(self, key_id: str) -> KeyRecord | None:
        return self._update_key(key_id, {"active": False})

    @_mapped
    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> KeyRecord | None:
        return self._update_key(key_id, {"limits": limits})

    def _update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        return _key(
            self.db.api_keys.find_one_and_update(
                {"_id": key_id}, {"$set": changes}, return_document=ReturnDocument.AFTER
            )
        )

    @_mapped
    def touch_keys(self, last_used: dict[str, float]) -> None:
        if last_used:
            self.db.api_keys.bulk_write(
                [
                    UpdateOne(
                        {"_id": key_id, "$or": [{"last_used": None}, {"last_used": {"$lt": ts}}]},
                        {"$set": {"last_used": ts}},
                    )
                    for key_id, ts in last_used.items()
                ],
                ordered=False,
            )

    @_mapped
    def insert_usage(self, events: list[UsageEvent]) -> int:
        """Insert the events; a request id already stored is a replay, not a failure.

        A write-concern error fails the call even when every document went in: the majority may not
        hold them, so the ledger keeps the batch and replays it (idempotent by request id).
        """
        if not events:
            return 0
        documents = []
        for event in events:
            document = event.to_dict()
            document["_id"] = document.pop("request_id")
            documents.append(document)
        try:
            return len(self.db.usage_events.insert_many(documents, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            if not _only_duplicates(exc):
                raise
            return exc.details["nInserted"]

    @_mapped
    def count_usage(self) -> int:
        """The collection's metadata count: no scan (exact but after an unclean shutdown, until the next validate)."""
        return self.db.usage_events.estimated_document_count()

    @_mapped
    def usage_events(self, since: float = 0.0, until: float | None = None) -> list[UsageEvent]:
        return [_event(d) for d in self._find("events.by_ts", _match("ts", since, until))]

    def _sums(self, match: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
        """Group the matching events by `group` (a dict of expressions); one flat dict of keys and sums each."""
        pipeline = [{"$match": match}, {"$group": {"_id": group, **SUMS}}]
        return [{**row.pop("_id"), **row} for row in self._aggregate(_events_shape(match), pipeline)]

    @_mapped
    def usage_summary(
        self,
        group_by: str,
        since: float = 0.0,
        until: float | None = None,
        user: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
        if group_by not in GROUPS:
            raise StoreError(f"cannot group usage by {group_by!r}")
        expr = _bucket_start(BUCKETS["day"]) if group_by == "day" else "$" + {"key": "key_id"}.get(group_by, group_by)
        rows = self._sums(_match("ts", since, until, user, key_id, model), {"group": expr})
        if group_by == "day":
            for row in rows:
                row["group"] = _day(row["group"])
        return sorted((UsageRow(**row) for row in rows), key=lambda r: r["group"])

    @_mapped
    def usage_by_day(
        self, since: float, until: float | None = None, user: str | None = None, key_id: str | None = None
    ) -> list[DailyRow]:
        rows = self._sums(
            _match("ts", since, until, user, key_id), {"day": _bucket_start(BUCKETS["day"]), "model": "$model"}
        )
        for row in rows:
            row["day"] = _day(row["day"])
        return sorted((DailyRow(**row) for row in rows), key=lambda r: (r["day"], r["model"]))

    @_mapped
    def delete_usage_before(self, ts: float) -> int:
        return _retry_once(lambda: self.db.usage_events.delete_many({"ts": {"$lt": ts}})).deleted_count

    @_mapped
    def rollup_usage(self, bucket: str, start: float, end: float) -> int:
        """Upsert each rebuilt row, then drop the range's rows that no longer exist: readers never see a gap.

        MongoDB has no multi-document transaction without a replica set, so unlike SQLite this is not
        one atomic step; replicas running it at once on the same events still end with the same rows.
        """
        size = _bucket_size(bucket)
        lo, hi = -(-start // size) * size, -(-end // size) * size
        rows = self._sums(
            {"ts": {"$gte": lo, "$lt": hi}},
            {"start": _bucket_start(size), "user": "$user", "key_id": "$key_id", "model": "$model"},
        )
        for row in rows:
            row.update(bucket=bucket, start=float(row["start"]))
            row["_id"] = json.dumps([row[name] for name in ROLLUP_KEY])
        self._replace_range(self.db.usage_rollups, {"bucket": bucket}, start, end, rows)
        if bucket == "day":
            self._rebuild_daily_users(start, end)
            self._rebuild_daily_models(start, end)
        return len(rows)

    def _rebuild_daily_users(self, start: float, end: float) -> None:
        """The per-user daily rows starting in [start, end), from the per-key day rows (fewer to read
        than the raw events)."""
        self._resum("daily_users.by_start", DAILY_USER_KEY, "rollups.by_start", {"bucket": "day"}, start, end)

    def _rebuild_daily_models(self, start: float, end: float) -> None:
        """The per-model daily rows starting in [start, end), from the per-user daily rows (rebuild those first)."""
        self._resum("daily_models.by_start", DAILY_MODEL_KEY, "daily_users.by_start", {}, start, end)

    def _resum(self, target: str, key: tuple[str, ...], source: str, scope: dict[str, Any], start: float,
               end: float) -> None:
        """Replace the rows of shape `target` starting in [start, end) with the sums per `key` fields
        of the rows of shape `source`."""
        pipeline = [
            {"$match": {**scope, "start": {"$gte": start, "$lt": end}}},
            {"$group": {"_id": {name: f"${name}" for name in key}, **ROLLUP_SUMS}},
        ]
        rows = []
        for row in self._aggregate(source, pipeline):
            row.update(row.pop("_id"))
            row["_id"] = json.dumps([row[name] for name in key])
            rows.append(row)
        self._replace_range(self.db[QUERIES[target].collection], {}, start, end, rows)

    @staticmethod
    def _replace_range(collection: Any, scope: dict[str, Any], start: float, end: float,
                       rows: list[dict[str, Any]]) -> None:
        """Upsert `rows` (with their natural `_id`), then drop the other rows of `scope` starting in [start, end).

        Each upserted row carries this rebuild's `generation` (a time; `$max`, so a row only ever
        gains a later one), and the rows left with an earlier generation (or none) are the stale
        ones. Every command has a bounded size however many rows the range holds: the upserts go in
        batches of WRITE_BATCH and the delete names no row. A rebuild running at once on another
        replica writes a later or equal generation, which this delete keeps.
        """
        generation = time.time()
        updates = [
            UpdateOne({"_id": row["_id"]}, {"$set": {k: v for k, v in row.items() if k != "_id"},
                                            "$max": {"generation": generation}}, upsert=True)
            for row in rows
        ]
        for i in range(0, len(updates), WRITE_BATCH):
            _upsert(collection, updates[i:i + WRITE_BATCH])
        stale = {**scope, "start": {"$gte": start, "$lt": end}, "generation": {"$not": {"$gte": generation}}}
        _retry_once(lambda: collection.delete_many(stale))

    @_mapped
    def usage_rollups(
        self,
        bucket: str,
        since: float = 0.0,
        until: float | None = None,
        user: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[RollupRow]:
        _bucket_size(bucket)
        query = {"bucket": bucket, **_match("start", since, until, user, key_id, model)}
        found = self._find(_rollups_shape(user, key_id), query, {"_id": False, "generation": False})
        return [RollupRow(**d) for d in found]

    @_mapped
    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        return self._take(
            self.db.leases, {"_id": name, "$or": [{"until": {"$lte": now}}, {"holder": holder}]},
            {"holder": holder, "until": now + ttl},
        )

    @_mapped
    def reserve_budgets(self, request_id: str, holds: list[BudgetHold], now: float,
                        expires: float) -> tuple[int, list[int]]:
        locks = sorted({"hold:" + hold.counter for hold in holds})
        token = secrets.token_hex(8)
        taken: list[str] = []
        try:
            for name in locks:
                self._lock(name, token)
                taken.append(name)
            live = self._live_holds(now, [hold.counter for hold in holds])
            used = [self._stored_use(hold) + sum(live.get(hold.counter, {}).values()) for hold in holds]
            for i, hold in enumerate(holds):
                if used[i] + hold.amount > hold.limit:
                    return i, used
            self.db.budget_holds.bulk_write([
                ReplaceOne({"_id": f"{request_id} {hold.counter}"},
                           {"request_id": request_id, "counter": hold.counter, "amount": hold.amount,
                            "expires": expires}, upsert=True)
                for hold in holds
            ])
            return -1, used
        finally:
            for name in taken:
                self.db.leases.delete_one({"_id": name, "holder": token})

    def _lock(self, name: str, token: str) -> None:
        deadline = time.monotonic() + HOLD_LOCK_WAIT_SECONDS
        while True:
            now = time.time()
            if self._take(self.db.leases, {"_id": name, "until": {"$lte": now}},
                          {"holder": token, "until": now + HOLD_LOCK_SECONDS}):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"budget lock {name} stayed busy for {HOLD_LOCK_WAIT_SECONDS:g} s")
            time.sleep(0.002)

    def _stored_use(self, hold: BudgetHold) -> int:
        if hold.field not in HOLD_FIELDS:
            raise StoreError(f"cannot hold a budget on {hold.field!r}")
        match: dict[str, Any] = {hold.field: hold.who, "ts": {"$gte": hold.since}}
        if hold.tokens:
            if not hold.models:
                return 0
            match["model"] = {"$in": list(hold.models)}
            measure: Any = {"$add": ["$prompt_tokens", "$completion_tokens"]}
        else:
            measure = "$cost"
        rows = self._aggregate(_events_shape(match), [{"$match": match},
                                                      {"$group": {"_id": None, "total": {"$sum": measure}}}])
        return round((rows[0]["total"] if rows else 0) * hold.scale)

    def _live_holds(self, now: float, counters: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Unexpired holds whose events are not stored: {counter: {request id: amount}}."""
        query: dict[str, Any] = {"expires": {"$gt": now}}
        if counters is not None:
            query["counter"] = {"$in": counters}
        found = list(self._find("holds.live" if counters is None else "holds.of_counters", query))
        ids = list({d["request_id"] for d in found})
        stored = {d["_id"] for d in self._find("events.by_id", {"_id": {"$in": ids}}, {"_id": True})} if ids else set()
        live: dict[str, dict[str, int]] = {}
        for d in found:
            if d["request_id"] not in stored:
                live.setdefault(d["counter"], {})[d["request_id"]] = d["amount"]
        return live

    @_mapped
    def release_budgets(self, request_id: str) -> None:
        self.db.budget_holds.delete_many({"request_id": request_id})

    @_mapped
    def held_budgets(self, now: float) -> dict[str, int]:
        return {counter: sum(held.values()) for counter, held in self._live_holds(now).items()}

    @_mapped
    def purge_holds(self, now: float) -> int:
        gone = self.db.budget_holds.delete_many({"expires": {"$lte": now}}).deleted_count
        ids = list({d["request_id"] for d in self._find("holds.of_request", {}, {"request_id": True, "_id": False})})
        if ids:
            stored = [d["_id"] for d in self._find("events.by_id", {"_id": {"$in": ids}}, {"_id": True})]
            gone += self.db.budget_holds.delete_many({"request_id": {"$in": stored}}).deleted_count
        return gone

    @_mapped
    def claim_once(self, namespace: str, item_id: str, expires: float) -> bool:
        return self._take(
            self.db.claims, {"_id": _claim_id(namespace, item_id), "expires": {"$lte": time.time()}},
            {"namespace": namespace, "item_id": item_id, "expires": expires,
             "expires_at": datetime.fromtimestamp(expires, UTC)},
        )

    @staticmethod
    def _take(collection: Any, free: dict[str, Any], values: dict[str, Any]) -> bool:
        """Set `values` on the document if `free` matches it, or create it; False if it exists and is not free.

        Atomic: when the document exists but `free` does not match it, the upsert's insert collides on _id.
        """
        try:
            collection.update_one(free, {"$set": values}, upsert=True)
        except DuplicateKeyError:
            return False
        return True

    @_mapped
    def is_claimed(self, namespace: str, item_id: str) -> bool:
        live = {"_id": _claim_id(namespace, item_id), "expires": {"$gt": time.time()}}
        return self._one("claims.by_id", live, {"_id": True}) is not None

    @_mapped
    def purge_claims(self, now: float) -> int:
        return _retry_once(lambda: self.db.claims.delete_many({"expires": {"$lte": now}})).deleted_count

    def _ensure_user(self, username: str, values: dict[str, Any], new_user: UserRecord | None = None) -> dict[str, Any]:
        """Set `values` on the user, creating the user first if missing (as `new_user`, or with defaults);
        return the document."""
        new = asdict(new_user or UserRecord(username))
        new.pop("username")
        new["created"] = new["created"] or time.time()
        update: dict[str, Any] = {"$setOnInsert": {k: v for k, v in new.items() if k not in values}}
        if values:
            update["$set"] = values
        return self.db.users.find_one_and_update(
            {"_id": username}, update, upsert=True, return_document=ReturnDocument.AFTER
        )

    @_mapped
    def upsert_user(self, user: UserRecord) -> UserRecord:
        values: dict[str, Any] = {"display_name": user.display_name, "email": user.email, "is_admin": user.is_admin}
        if user.last_login is not None:
            values["last_login"] = user.last_login
        return _user(self._ensure_user(user.username, values, user))

    @_mapped
    def get_user(self, username: str) -> UserRecord | None:
        document = self._one("users.by_id", {"_id": username})
        return _user(document) if document else None

    @_mapped
    def list_users(self) -> list[UserRecord]:
        return [_user(d) for d in self._find("users.by_id", {})]

    @_mapped
    def set_agreement(self, username: str, version: str) -> None:
        self._ensure_user(username, {"agreement_version": version})

    @_mapped
    def set_user_limits(self, username: str, limits: dict[str, float]) -> UserRecord:
        return _user(self._ensure_user(username, {"limits": limits}))

    @_mapped
    def find_users(self, search: str | None = None, admin: bool | None = None, disabled: bool | None = None,
                   offset: int = 0, limit: int = 50) -> tuple[list[UserRecord], int]:
        terms: list[dict[str, Any]] = []
        if search:
            terms.append(_search(search, ("_id", "display_name", "email")))
        if admin is True:
            terms.append({"$or": [{"is_admin": True}, {"admin_granted": True}]})
        elif admin is False:
            # `$ne: True` also matches documents written before the field existed.
            terms.append({"is_admin": {"$ne": True}, "admin_granted": {"$ne": True}})
        if disabled is not None:
            terms.append({"disabled": True} if disabled else {"disabled": {"$ne": True}})
        found, total = self._page("users.page", _all_of(terms), offset, limit)
        return [_user(d) for d in found], total

    @_mapped
    def update_user(self, username: str, changes: dict[str, Any]) -> UserRecord | None:
        document = self.db.users.find_one_and_update(
            {"_id": username}, {"$set": _changes(changes, USER_CHANGES)}, return_document=ReturnDocument.AFTER
        )
        return _user(document) if document else None

    @_mapped
    def get_key(self, key_id: str) -> KeyRecord | None:
        return _key(self._one("keys.by_id", {"_id": key_id}))

    @_mapped
    def find_keys(self, owner: str | None = None, model: str | None = None, status: str | None = None,
                  search: str | None = None, now: float = 0.0, offset: int = 0,
                  limit: int = 50) -> tuple[list[KeyRecord], int]:
        terms: list[dict[str, Any]] = []
        if owner is not None:
            terms.append({"owner": owner})
        if model is not None:
            terms.append({"$or": [{"models": {"$size": 0}}, {"models": model}]})
        if status is not None:
            if status not in KEY_STATUSES:
                raise StoreError(f"unknown key status {status!r}")
            terms.append({
                "active": {"active": True, "$or": [{"expires": None}, {"expires": {"$gt": now}}]},
                "expired": {"active": True, "expires": {"$ne": None, "$lte": now}},
                "revoked": {"active": False},
            }[status])
        if search:
            terms.append(_search(search, ("name", "_id", "prefix")))
        shape = "keys.page" if owner is None else "keys.page_of_owner"
        found, total = self._page(shape, _all_of(terms), offset, limit)
        return [_key(d) for d in found], total

    @_mapped
    def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        return self._update_key(key_id, _changes(changes, KEY_CHANGES))

    @_mapped
    def list_models(self) -> list[ModelRecord]:
        return [_model(d) for d in self._find("models.by_id", {})]

    @_mapped
    def get_model(self, model_id: str) -> ModelRecord | None:
        document = self._one("models.by_id", {"_id": model_id})
        return _model(document) if document else None

    @_mapped
    def insert_model(self, record: ModelRecord) -> bool:
        try:
            self.db.models.insert_one(
                {"_id": record.id, "settings": record.settings, "created": record.created, "updated": record.updated}
            )
        except DuplicateKeyError:
            return False
        return True

    @_mapped
    def update_model(self, record: ModelRecord) -> bool:
        result = self.db.models.update_one(
            {"_id": record.id}, {"$set": {"settings": record.settings, "updated": record.updated}}
        )
        return result.matched_count == 1

    @_mapped
    def delete_model(self, model_id: str) -> bool:
        return self.db.models.delete_one({"_id": model_id}).deleted_count == 1

    @_mapped
    def insert_admin_token(self, token: AdminToken) -> None:
        self.db.admin_tokens.insert_one({"_id": token.id, **{name: getattr(token, name) for name in TOKEN_FIELDS}})

    @_mapped
    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        return _token(self._one("tokens.by_hash", {"hash": token_hash}))

    @_mapped
    def list_admin_tokens(self) -> list[AdminToken]:
        return [_token(d) for d in self._find("tokens.newest", {})]

    @_mapped
    def revoke_admin_token(self, token_id: str) -> AdminToken | None:
        return _token(self.db.admin_tokens.find_one_and_update(
            {"_id": token_id}, {"$set": {"active": False}}, return_document=ReturnDocument.AFTER
        ))

    @_mapped
    def touch_admin_token(self, token_id: str, ts: float) -> None:
        # As touch_keys: a conditional $set rather than $max, which mongomock cannot apply over null.
        self.db.admin_tokens.update_one(
            {"_id": token_id, "$or": [{"last_used": None}, {"last_used": {"$lt": ts}}]}, {"$set": {"last_used": ts}}
        )

    @_mapped
    def insert_audit(self, entry: AuditEntry) -> AuditEntry:
        # An ObjectId increases with time (seconds first, then a per-process counter), so newest
        # first is ts then _id descending.
        entry_id = ObjectId()
        self.db.audit_log.insert_one({"_id": entry_id, **{name: getattr(entry, name) for name in AUDIT_FIELDS}})
        return replace(entry, id=str(entry_id))

    @_mapped
    def find_audit(self, actor: str | None = None, action: str | None = None, target: str | None = None,
                   via: str | None = None, since: float = 0.0, until: float | None = None, offset: int = 0,
                   limit: int = 50) -> tuple[list[AuditEntry], int]:
        query = _span("ts", since, until)
        for name, value in (("actor", actor), ("target", target), ("via", via)):
            if value is not None:
                query[name] = value
        if action:
            query["action"] = {"$regex": "^" + re.escape(action)}
        shape = "audit.of_actor" if actor is not None else "audit.of_target" if target is not None else "audit.page"
        found, total = self._page(shape, query, offset, limit)
        return [_audit(d) for d in found], total

    @_mapped
    def usage_report(self, group_by: str, since: float, live_since: float, until: float | None = None,
                     user: str | None = None, key_id: str | None = None, model: str | None = None,
                     order: str = "group", offset: int = 0,
                     limit: int | None = None) -> tuple[list[UsageRow], int, UsageTotals]:
        """Group the raw (live) part and the rollup part apart, then merge them in order.

        `$unionWith` would make this one pipeline, but mongomock lacks it, so this formulation runs
        on both. The live part spans a day or two, so its groups (`live`) are few: MongoDB sums,
        counts, sorts and pages the rollup groups outside `live`, and that page is merged with the
        `live` groups (their rollup sums added) in the same order. Only `live`, their rollup sums
        and at most len(live) + limit other rollup groups travel, never the rows.
        """
        if group_by not in GROUPS:
            raise StoreError(f"cannot group usage by {group_by!r}")
        if order not in REPORT_ORDERS:
            raise StoreError(f"cannot order usage by {order!r}")
        field = REPORT_FIELD[group_by]
        split = min(max(live_since, since), until if until is not None else float("inf"))
        live: dict[Any, dict[str, Any]] = {}
        if until is None or split < until:
            expr = _bucket_start(BUCKETS["day"]) if group_by == "day" else f"${field}"
            live = {row.pop("group"): row for row in self._sums(_match("ts", split, until, user, key_id, model),
                                                                {"group": expr})}
        rolled = _match("start", since, split, user, key_id, model)
        # A key in group or filter needs the per-key rows; without one, the smaller per-user rows do;
        # by day or model without a person either, the per-model rows (a few per day) do.
        if group_by == "key" or key_id is not None:
            rolled["bucket"] = "day"
            shape = _rollups_shape(user, key_id)
        elif group_by in ("day", "model") and user is None:
            shape = "daily_models.by_start"
        else:
            shape = "daily_users.of_user" if user is not None else "daily_users.by_start"
        group = {"$group": {"_id": f"${field}", **ROLLUP_SUMS}}
        known = list(live)
        both: dict[Any, dict[str, Any]] = {}
        if known:
            pipeline = [{"$match": {"$and": [rolled, {field: {"$in": known}}]}}, group]
            both = {row.pop("_id"): row for row in self._aggregate(shape, pipeline)}
        everything = [{"$match": rolled}, group, {"$group": {"_id": None, "groups": {"$sum": 1}, **ROLLUP_SUMS}}]
        rolled_up = self._aggregate(shape, everything)
        count = sum(row["groups"] for row in rolled_up) + sum(1 for g in live if g not in both)
        totals = UsageTotals(**_total(*rolled_up, *live.values()))
        if limit is not None and limit <= 0:
            return [], count, totals
        # The rollup groups outside `live` at merged positions [offset, offset + limit) are among
        # those at positions [offset - len(live), offset + limit) of their own order.
        first = max(offset - len(live), 0)
        pipeline = [{"$match": rolled}, group, {"$match": {"_id": {"$nin": known}}}]
        if order == "tokens":
            pipeline.append({"$addFields": {"tokens": {"$add": ["$prompt_tokens", "$completion_tokens"]}}})
        pipeline.append({"$sort": {"_id": ASCENDING} if order == "group" else {order: DESCENDING, "_id": ASCENDING}})
        if first:
            pipeline.append({"$skip": first})
        if limit is not None:
            pipeline.append({"$limit": offset + limit - first})
        rest = [UsageRow(group=row["_id"], **_total(row)) for row in self._aggregate(shape, pipeline)]
        key = _report_order(order)
        merged = sorted((UsageRow(group=g, **_total(sums, both.get(g, {}))) for g, sums in live.items()), key=key)
        page = [
            row for position, row in enumerate(heapq.merge(rest, merged, key=key), start=first)
            if position >= offset and (limit is None or position < offset + limit)
        ]
        if group_by == "day":
            for row in page:
                row["group"] = _day(row["group"])
        return page, count, totals

    @_mapped
    def find_usage(self, user: str | None = None, key_id: str | None = None, since: float = 0.0,
                   until: float | None = None, offset: int = 0, limit: int = 50) -> tuple[list[UsageEvent], int]:
        query = _span("ts", since, until)
        for name, value in (("user", user), ("key_id", key_id)):
            if value is not None:
                query[name] = value
        shape = "events.of_key" if key_id is not None else "events.of_user" if user is not None else "events.newest"
        found, total = self._page(shape, query, offset, limit)
        return [_event(d) for d in found], total


def _match(
    column: str, since: float, until: float | None, user: str | None = None, key_id: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The query for a [since, until) range on `column` plus the optional equality filters."""
    span: dict[str, float] = {"$gte": since}
    if until is not None:
        span["$lt"] = until
    query: dict[str, Any] = {column: span}
    for name, value in (("user", user), ("key_id", key_id), ("model", model)):
        if value is not None:
            query[name] = value
    return query


def _span(column: str, since: float, until: float | None) -> dict[str, Any]:
    """As `_match` without filters, but empty for the whole time line, so an unfiltered list counts from metadata."""
    return _match(column, since, until) if since > 0 or until is not None else {}


def _events_shape(match: dict[str, Any]) -> str:
    """The query shape of an events `$match`: by its most selective equality (a key, a person, a model)."""
    for field, shape in (("key_id", "events.of_key"), ("user", "events.of_user"), ("model", "events.of_model")):
        if field in match:
            return shape
    return "events.by_ts"


def _rollups_shape(user: str | None, key_id: str | None) -> str:
    """The query shape of per-key rollup rows: by key, else by person, else by start alone."""
    return "rollups.of_key" if key_id is not None else "rollups.of_user" if user is not None else "rollups.by_start"


def client_options(query: str) -> dict[str, Any]:
    """CLIENT_OPTIONS less those the URL's query string sets (matched without regard to case, as the driver does)."""
    given = {option.lower() for option in parse_qs(query)}
    left = [n for n in CLIENT_OPTIONS if n.lower() not in given]
    if "timeoutms" in given:
        left = [n for n in left if n not in LEFT_TO_TIMEOUT_MS]
    return {name: CLIENT_OPTIONS[name] for name in left}


def _index_key(key: Any) -> Index:
    """An index's key as listIndexes reports it ((field, direction) pairs), in the form of `Index`."""
    pairs = key.items() if isinstance(key, dict) else key
    return tuple((name, int(direction)) for name, direction in pairs)


def _only_duplicates(exc: BulkWriteError) -> bool:
    """The bulk write failed only on ids already present: no other write error and no write-concern error."""
    details = exc.details
    return not details.get("writeConcernErrors") and all(
        error["code"] == DUPLICATE_KEY for error in details.get("writeErrors", ()))


def _upsert(collection: Any, updates: list[UpdateOne]) -> None:
    """Run the upserts, again when a concurrent upsert of the same new _id made one lose with a duplicate key."""
    for attempt in range(1, UPSERT_ATTEMPTS + 1):
        try:
            collection.bulk_write(updates, ordered=False)
            return
        except BulkWriteError as exc:
            if attempt == UPSERT_ATTEMPTS or not _only_duplicates(exc):
                raise


def _bucket_start(size: int) -> dict[str, Any]:
    """The UTC-aligned start of the `size`-second bucket holding an event (plain arithmetic, so mongomock runs it)."""
    return {"$subtract": ["$ts", {"$mod": ["$ts", size]}]}


def _bucket_size(bucket: str) -> int:
    if bucket not in BUCKETS:
        raise StoreError(f"unknown rollup bucket {bucket!r} (use {' or '.join(BUCKETS)})")
    return BUCKETS[bucket]


def _day(start: float) -> str:
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")


def _claim_id(namespace: str, item_id: str) -> str:
    return json.dumps([namespace, item_id])


def _total(*parts: dict[str, Any]) -> dict[str, Any]:
    """The field-wise sums of usage `parts` (a missing field counts as nothing)."""
    total = {name: sum(part.get(name, 0) for part in parts) for name in SUM_FIELDS}
    total["cost"] = float(total["cost"])
    return total


def _report_order(order: str) -> Callable[[UsageRow], tuple]:
    """The sort key of a report order, as MongoDB's `$sort` in `usage_report` orders the same rows."""
    if order == "group":
        return lambda row: (row["group"],)
    if order == "tokens":
        return lambda row: (-(row["prompt_tokens"] + row["completion_tokens"]), row["group"])
    return lambda row: (-row[order], row["group"])  # type: ignore[literal-required]


def _search(text: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Any of the fields `names` holds `text` as a case-insensitive, literal substring."""
    pattern = {"$regex": re.escape(text), "$options": "i"}
    return {"$or": [{name: pattern} for name in names]}


def _all_of(terms: list[dict[str, Any]]) -> dict[str, Any]:
    """The conjunction of the non-empty `terms` (empty for none: everything matches)."""
    terms = [term for term in terms if term]
    return {"$and": terms} if len(terms) > 1 else terms[0] if terms else {}


def _changes(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The `$set` of an admin's changes; ValueError (before anything is written) for a field not allowed."""
    unknown = set(changes) - set(allowed)
    if unknown or not changes:
        raise ChangeRefused(f"cannot change {', '.join(sorted(unknown)) or 'nothing'} (allowed: {', '.join(allowed)})")
    return dict(changes)


def _key(document: dict[str, Any] | None) -> KeyRecord | None:
    if document is None:
        return None
    return KeyRecord(id=document["_id"], **{name: document[name] for name in KEY_FIELDS if name in document})


def _user(document: dict[str, Any]) -> UserRecord:
    return UserRecord(username=document["_id"], **{name: document[name] for name in USER_FIELDS if name in document})


def _event(document: dict[str, Any]) -> UsageEvent:
    return UsageEvent(request_id=document.pop("_id"), **document)


def _model(document: dict[str, Any]) -> ModelRecord:
    return ModelRecord(id=document["_id"], settings=document["settings"], created=document["created"],
                       updated=document["updated"])


def _token(document: dict[str, Any] | None) -> AdminToken | None:
    if document is None:
        return None
    # Tokens stored before they had an owner have neither `owner` nor `parent`: with no owner,
    # such a token acts for nobody and is refused.
    return AdminToken(id=document["_id"], **{name: document.get(name, "") if name in ("owner", "parent")
                                             else document[name] for name in TOKEN_FIELDS})


def _audit(document: dict[str, Any]) -> AuditEntry:
    return AuditEntry(id=str(document["_id"]), **{name: document[name] for name in AUDIT_FIELDS})

