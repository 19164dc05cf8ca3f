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
import json
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pymongo import ASCENDING, MongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ..records import KeyRecord, UsageEvent, UserRecord
from .base import BUCKETS, GROUPS, DailyRow, RollupRow, StoreError, UsageRow

DEFAULT_DATABASE = "llmgateway"
SERVER_SELECTION_TIMEOUT_MS = 5000
DUPLICATE_KEY = 11000
# The claims TTL index is a backstop for a stopped purge job, so it waits this long past expiry.
CLAIM_TTL_GRACE_SECONDS = 3600
ROLLUP_KEY = ("bucket", "start", "user", "key_id", "model")
USER_FIELDS = tuple(f.name for f in fields(UserRecord) if f.name != "username")
KEY_FIELDS = tuple(f.name for f in fields(KeyRecord) if f.name != "id")
SUMS = {
    "requests": {"$sum": 1},
    "prompt_tokens": {"$sum": "$prompt_tokens"},
    "completion_tokens": {"$sum": "$completion_tokens"},
    "cost": {"$sum": "$cost"},
    "estimated": {"$sum": {"$cond": ["$estimated", 1, 0]}},
}
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "api_keys": [([("hash", ASCENDING)], {"unique": True}), ([("owner", ASCENDING), ("created", ASCENDING)], {})],
    "usage_events": [
        ([("ts", ASCENDING)], {}),
        ([("user", ASCENDING), ("ts", ASCENDING)], {}),
        ([("key_id", ASCENDING), ("ts", ASCENDING)], {}),
        ([("model", ASCENDING), ("ts", ASCENDING)], {}),
    ],
    "usage_rollups": [([(name, ASCENDING) for name in ROLLUP_KEY], {"unique": True})],
    "claims": [
        ([("expires", ASCENDING)], {}),
        ([("expires_at", ASCENDING)], {"expireAfterSeconds": CLAIM_TTL_GRACE_SECONDS}),
    ],
}

P = ParamSpec("P")
R = TypeVar("R")


def _mapped(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any pymongo failure of `method` into a StoreError whose message carries no credentials."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except PyMongoError as exc:
            store: MongoStore = args[0]  # type: ignore[assignment]
            raise store.error(exc) from None

    return call


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
            extra = {"serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS}
            if "serverselectiontimeoutms" in {option.lower() for option in parse_qs(parts.query)}:
                extra = {}
            try:
                client = MongoClient(url, **extra)
            except (PyMongoError, ValueError) as exc:
                raise self.error(exc) from None
        self.client = client
        self.db: Database = client[name]

    def error(self, exc: Exception) -> StoreError:
        """A StoreError for `exc`, with anything from the URL's user-info part blotted out."""
        message = str(exc)
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StoreError(f"MongoDB store {self.where}: {type(exc).__name__}: {message}")

    @_mapped
    def init(self) -> None:
        for collection, indexes in INDEXES.items():
            for keys, options in indexes:
                self.db[collection].create_index(keys, **options)

    @_mapped
    def ping(self) -> None:
        self.db.command("ping")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    @_mapped
    def insert_key(self, record: KeyRecord) -> None:
        self._ensure_user(record.owner, {})
        document = asdict(record)
        document["_id"] = document.pop("id")
        self.db.api_keys.insert_one(document)

    @_mapped
    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return _key(self.db.api_keys.find_one({"hash": key_hash}))

    @_mapped
    def list_keys(self, owner: str | None = None, active_only: bool = False) -> list[KeyRecord]:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if active_only:
            query["active"] = True
        return [_key(d) for d in self.db.api_keys.find(query).sort([("created", ASCENDING), ("_id", ASCENDING)])]

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
            if any(error["code"] != DUPLICATE_KEY for error in exc.details["writeErrors"]):
                raise
            return exc.details["nInserted"]

    @_mapped
    def count_usage(self) -> int:
        return self.db.usage_events.count_documents({})

    @_mapped
    def usage_events(self, since: float = 0.0, until: float | None = None) -> list[UsageEvent]:
        found = self.db.usage_events.find(_match("ts", since, until)).sort([("ts", ASCENDING), ("_id", ASCENDING)])
        return [UsageEvent(request_id=d.pop("_id"), **d) for d in found]

    def _sums(self, match: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
        """Group the matching events by `group` (a dict of expressions); one flat dict of keys and sums each."""
        pipeline = [{"$match": match}, {"$group": {"_id": group, **SUMS}}]
        return [{**row.pop("_id"), **row} for row in self.db.usage_events.aggregate(pipeline)]

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
        return self.db.usage_events.delete_many({"ts": {"$lt": ts}}).deleted_count

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
        ids = []
        for row in rows:
            row.update(bucket=bucket, start=float(row["start"]))
            row["_id"] = json.dumps([row[name] for name in ROLLUP_KEY])
            ids.append(row["_id"])
        rollups = self.db.usage_rollups
        if rows:
            rollups.bulk_write([ReplaceOne({"_id": r["_id"]}, r, upsert=True) for r in rows], ordered=False)
        rollups.delete_many({"bucket": bucket, "start": {"$gte": start, "$lt": end}, "_id": {"$nin": ids}})
        return len(rows)

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
        found = self.db.usage_rollups.find(
            {"bucket": bucket, **_match("start", since, until, user, key_id, model)}, {"_id": False}
        ).sort([(name, ASCENDING) for name in ROLLUP_KEY[1:]])
        return [RollupRow(**d) for d in found]

    @_mapped
    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        return self._take(
            self.db.leases, {"_id": name, "$or": [{"until": {"$lte": now}}, {"holder": holder}]},
            {"holder": holder, "until": now + ttl},
        )

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
        return self.db.claims.find_one(live, {"_id": True}) is not None

    @_mapped
    def purge_claims(self, now: float) -> int:
        return self.db.claims.delete_many({"expires": {"$lte": now}}).deleted_count

    def _ensure_user(self, username: str, values: dict[str, Any], created: float = 0.0) -> dict[str, Any]:
        """Set `values` on the user, creating the user with defaults first if missing; return the document."""
        new = asdict(UserRecord(username, created=created or time.time()))
        new.pop("username")
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
        return _user(self._ensure_user(user.username, values, user.created))

    @_mapped
    def get_user(self, username: str) -> UserRecord | None:
        document = self.db.users.find_one({"_id": username})
        return _user(document) if document else None

    @_mapped
    def list_users(self) -> list[UserRecord]:
        return [_user(d) for d in self.db.users.find().sort("_id", ASCENDING)]

    @_mapped
    def set_agreement(self, username: str, version: str) -> None:
        self._ensure_user(username, {"agreement_version": version})

    @_mapped
    def set_user_limits(self, username: str, limits: dict[str, float]) -> UserRecord:
        return _user(self._ensure_user(username, {"limits": limits}))


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


def _key(document: dict[str, Any] | None) -> KeyRecord | None:
    if document is None:
        return None
    return KeyRecord(id=document["_id"], **{name: document[name] for name in KEY_FIELDS if name in document})


def _user(document: dict[str, Any]) -> UserRecord:
    return UserRecord(username=document["_id"], **{name: document[name] for name in USER_FIELDS if name in document})

