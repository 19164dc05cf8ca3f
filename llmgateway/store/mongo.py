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
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

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
SERVER_SELECTION_TIMEOUT_MS = 5000
DUPLICATE_KEY = 11000
# The claims TTL index is a backstop for a stopped purge job, so it waits this long past expiry.
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
NEWEST_KEYS = [("created", DESCENDING), ("_id", ASCENDING)]
NEWEST_EVENTS = [("ts", DESCENDING), ("_id", ASCENDING)]
NEWEST_AUDIT = [("ts", DESCENDING), ("_id", DESCENDING)]
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "api_keys": [
        ([("hash", ASCENDING)], {"unique": True}),
        ([("owner", ASCENDING), ("created", ASCENDING)], {}),
        (NEWEST_KEYS, {}),
    ],
    "usage_events": [
        ([("ts", ASCENDING)], {}),
        ([("user", ASCENDING), ("ts", ASCENDING)], {}),
        ([("key_id", ASCENDING), ("ts", ASCENDING)], {}),
        ([("model", ASCENDING), ("ts", ASCENDING)], {}),
        # find_usage pages one person's or one key's events newest first: with the tie-breaker in
        # the index, MongoDB reads just the page instead of sorting every match.
        ([("user", ASCENDING), *NEWEST_EVENTS], {}),
        ([("key_id", ASCENDING), *NEWEST_EVENTS], {}),
    ],
    "budget_holds": [
        ([("counter", ASCENDING), ("expires", ASCENDING)], {}),
        ([("request_id", ASCENDING)], {}),
    ],
    "usage_rollups": [
        ([(name, ASCENDING) for name in ROLLUP_KEY], {"unique": True}),
        ([("bucket", ASCENDING), ("key_id", ASCENDING), ("start", ASCENDING)], {}),
        ([("bucket", ASCENDING), ("user", ASCENDING), ("start", ASCENDING)], {}),
    ],
    "usage_daily_users": [
        ([(name, ASCENDING) for name in DAILY_USER_KEY], {"unique": True}),
        ([("user", ASCENDING), ("start", ASCENDING)], {}),
    ],
    "usage_daily_models": [([(name, ASCENDING) for name in DAILY_MODEL_KEY], {"unique": True})],
    "admin_tokens": [([("hash", ASCENDING)], {"unique": True}), ([("created", DESCENDING)], {})],
    "audit_log": [
        ([("ts", ASCENDING), ("_id", ASCENDING)], {}),
        ([("actor", ASCENDING), ("ts", ASCENDING)], {}),
        ([("target", ASCENDING), ("ts", ASCENDING)], {}),
        ([("action", ASCENDING), ("ts", ASCENDING)], {}),
    ],
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
        if self.db.usage_daily_users.find_one({}, {"_id": True}) is None:
            # A store written before the per-user daily rollups existed: derive them from the per-key
            # ones, a month of days at a time.
            days = sorted(self.db.usage_rollups.distinct("start", {"bucket": "day"}))
            for i in range(0, len(days), BACKFILL_DAYS):
                self._rebuild_daily_users(days[i], days[min(i + BACKFILL_DAYS, len(days)) - 1] + BUCKETS["day"])
        if self.db.usage_daily_models.find_one({}, {"_id": True}) is None:
            # A store written before the per-model daily rollups existed: derive them from the per-user
            # ones, a month of days at a time.
            days = sorted(self.db.usage_daily_users.distinct("start"))
            for i in range(0, len(days), BACKFILL_DAYS):
                self._rebuild_daily_models(days[i], days[min(i + BACKFILL_DAYS, len(days)) - 1] + BUCKETS["day"])

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
        return [_event(d) for d in found]

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
        self._resum(self.db.usage_daily_users, DAILY_USER_KEY, self.db.usage_rollups, {"bucket": "day"}, start, end)

    def _rebuild_daily_models(self, start: float, end: float) -> None:
        """The per-model daily rows starting in [start, end), from the per-user daily rows (rebuild those first)."""
        self._resum(self.db.usage_daily_models, DAILY_MODEL_KEY, self.db.usage_daily_users, {}, start, end)

    def _resum(self, target: Any, key: tuple[str, ...], source: Any, scope: dict[str, Any], start: float,
               end: float) -> None:
        """Replace `target`'s rows starting in [start, end) with `source`'s sums per `key` fields."""
        pipeline = [
            {"$match": {**scope, "start": {"$gte": start, "$lt": end}}},
            {"$group": {"_id": {name: f"${name}" for name in key}, **ROLLUP_SUMS}},
        ]
        rows = []
        for row in source.aggregate(pipeline, allowDiskUse=True):
            row.update(row.pop("_id"))
            row["_id"] = json.dumps([row[name] for name in key])
            rows.append(row)
        self._replace_range(target, {}, start, end, rows)

    @staticmethod
    def _replace_range(collection: Any, scope: dict[str, Any], start: float, end: float,
                       rows: list[dict[str, Any]]) -> None:
        """Upsert `rows` (with their natural `_id`), then drop the other rows of `scope` starting in [start, end)."""
        if rows:
            collection.bulk_write([ReplaceOne({"_id": r["_id"]}, r, upsert=True) for r in rows], ordered=False)
        stale = {**scope, "start": {"$gte": start, "$lt": end}, "_id": {"$nin": [r["_id"] for r in rows]}}
        collection.delete_many(stale)

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
        rows = list(self.db.usage_events.aggregate(
            [{"$match": match}, {"$group": {"_id": None, "total": {"$sum": measure}}}]))
        return round((rows[0]["total"] if rows else 0) * hold.scale)

    def _live_holds(self, now: float, counters: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Unexpired holds whose events are not stored: {counter: {request id: amount}}."""
        query: dict[str, Any] = {"expires": {"$gt": now}}
        if counters is not None:
            query["counter"] = {"$in": counters}
        found = list(self.db.budget_holds.find(query))
        ids = list({d["request_id"] for d in found})
        stored = {d["_id"] for d in self.db.usage_events.find({"_id": {"$in": ids}}, {"_id": True})} if ids else set()
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
        ids = list({d["request_id"] for d in self.db.budget_holds.find({}, {"request_id": True})})
        if ids:
            stored = [d["_id"] for d in self.db.usage_events.find({"_id": {"$in": ids}}, {"_id": True})]
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
        return self.db.claims.find_one(live, {"_id": True}) is not None

    @_mapped
    def purge_claims(self, now: float) -> int:
        return self.db.claims.delete_many({"expires": {"$lte": now}}).deleted_count

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
        query = _all_of(terms)
        found = _page(self.db.users.find(query).sort("_id", ASCENDING), offset, limit)
        return [_user(d) for d in found], self.db.users.count_documents(query)

    @_mapped
    def update_user(self, username: str, changes: dict[str, Any]) -> UserRecord | None:
        document = self.db.users.find_one_and_update(
            {"_id": username}, {"$set": _changes(changes, USER_CHANGES)}, return_document=ReturnDocument.AFTER
        )
        return _user(document) if document else None

    @_mapped
    def get_key(self, key_id: str) -> KeyRecord | None:
        return _key(self.db.api_keys.find_one({"_id": key_id}))

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
        query = _all_of(terms)
        found = _page(self.db.api_keys.find(query).sort(NEWEST_KEYS), offset, limit)
        return [_key(d) for d in found], self.db.api_keys.count_documents(query)

    @_mapped
    def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        return self._update_key(key_id, _changes(changes, KEY_CHANGES))

    @_mapped
    def list_models(self) -> list[ModelRecord]:
        return [_model(d) for d in self.db.models.find().sort("_id", ASCENDING)]

    @_mapped
    def get_model(self, model_id: str) -> ModelRecord | None:
        document = self.db.models.find_one({"_id": model_id})
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
        return _token(self.db.admin_tokens.find_one({"hash": token_hash}))

    @_mapped
    def list_admin_tokens(self) -> list[AdminToken]:
        return [_token(d) for d in self.db.admin_tokens.find().sort(NEWEST_KEYS)]

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
        query = _match("ts", since, until)
        for name, value in (("actor", actor), ("target", target), ("via", via)):
            if value is not None:
                query[name] = value
        if action:
            query["action"] = {"$regex": "^" + re.escape(action)}
        found = _page(self.db.audit_log.find(query).sort(NEWEST_AUDIT), offset, limit)
        return [_audit(d) for d in found], self.db.audit_log.count_documents(query)

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
        rollups = self.db.usage_rollups
        # A key in group or filter needs the per-key rows; without one, the smaller per-user rows do;
        # by day or model without a person either, the per-model rows (a few per day) do.
        if group_by == "key" or key_id is not None:
            rolled["bucket"] = "day"
        elif group_by in ("day", "model") and user is None:
            rollups = self.db.usage_daily_models
        else:
            rollups = self.db.usage_daily_users
        group = {"$group": {"_id": f"${field}", **ROLLUP_SUMS}}
        known = list(live)
        both: dict[Any, dict[str, Any]] = {}
        if known:
            pipeline = [{"$match": {"$and": [rolled, {field: {"$in": known}}]}}, group]
            both = {row.pop("_id"): row for row in rollups.aggregate(pipeline)}
        everything = [{"$match": rolled}, group, {"$group": {"_id": None, "groups": {"$sum": 1}, **ROLLUP_SUMS}}]
        rolled_up = list(rollups.aggregate(everything))
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
        rest = [UsageRow(group=row["_id"], **_total(row)) for row in rollups.aggregate(pipeline, allowDiskUse=True)]
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
        query = _match("ts", since, until, user, key_id)
        found = _page(self.db.usage_events.find(query).sort(NEWEST_EVENTS), offset, limit)
        return [_event(d) for d in found], self.db.usage_events.count_documents(query)


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


def _page(cursor: Any, offset: int, limit: int | None) -> list[dict[str, Any]]:
    """The documents of one page (pymongo reads `limit(0)` as no limit, so an empty page is kept empty here)."""
    if limit is not None and limit <= 0:
        return []
    cursor = cursor.skip(max(offset, 0))
    return list(cursor.limit(limit) if limit is not None else cursor)


def _search(text: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Any of the fields `names` holds `text` as a case-insensitive, literal substring."""
    pattern = {"$regex": re.escape(text), "$options": "i"}
    return {"$or": [{name: pattern} for name in names]}


def _all_of(terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {"$and": terms} if terms else {}


def _changes(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The `$set` of an admin's changes; ValueError (before anything is written) for a field not allowed."""
    unknown = set(changes) - set(allowed)
    if unknown or not changes:
        raise ValueError(f"cannot change {', '.join(sorted(unknown)) or 'nothing'} (allowed: {', '.join(allowed)})")
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
    return AdminToken(id=document["_id"], **{name: document[name] for name in TOKEN_FIELDS})


def _audit(document: dict[str, Any]) -> AuditEntry:
    return AuditEntry(id=str(document["_id"]), **{name: document[name] for name in AUDIT_FIELDS})

