"""Usage events, their rollups and the reports read from them, on MongoDB."""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from ...records import UsageEvent
from ..base import BUCKETS, GROUPS, REPORT_ORDERS, DailyRow, StoreError, UsageRow, UsageTotals
from .connection import MongoConnection, mapped_errors, retry_once, time_match, time_span
from .schema import DAILY_MODEL_KEY, DAILY_USER_KEY, QUERIES, ROLLUP_KEY, events_shape

DUPLICATE_KEY = 11000
# Concurrent upserts of one new _id: one of them may lose with a duplicate-key error, and its retry
# then finds the row and updates it.
UPSERT_ATTEMPTS = 3
# Writes of many documents go in commands of at most this many (every command stays far below
# MongoDB's 16 MiB document limit whatever the range).
WRITE_BATCH = 10_000
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


class MongoUsage(MongoConnection):
    """The `Usage` part of the MongoDB store."""

    @mapped_errors
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

    def _sums(self, match: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
        """Group the matching events by `group` (a dict of expressions); one flat dict of keys and sums each."""
        pipeline = [{"$match": match}, {"$group": {"_id": group, **SUMS}}]
        return [{**row.pop("_id"), **row} for row in self._aggregate(events_shape(match), pipeline)]

    @mapped_errors
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
        rows = self._sums(time_match("ts", since, until, user, key_id, model), {"group": expr})
        if group_by == "day":
            for row in rows:
                row["group"] = _day(row["group"])
        return sorted((UsageRow(**row) for row in rows), key=lambda r: r["group"])

    @mapped_errors
    def usage_by_day(
        self, since: float, until: float | None = None, user: str | None = None, key_id: str | None = None
    ) -> list[DailyRow]:
        rows = self._sums(
            time_match("ts", since, until, user, key_id), {"day": _bucket_start(BUCKETS["day"]), "model": "$model"}
        )
        for row in rows:
            row["day"] = _day(row["day"])
        return sorted((DailyRow(**row) for row in rows), key=lambda r: (r["day"], r["model"]))

    @mapped_errors
    def delete_usage_before(self, ts: float) -> int:
        return retry_once(lambda: self.db.usage_events.delete_many({"ts": {"$lt": ts}})).deleted_count

    @mapped_errors
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
        retry_once(lambda: collection.delete_many(stale))

    @mapped_errors
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
            live = {row.pop("group"): row for row in self._sums(time_match("ts", split, until, user, key_id, model),
                                                                {"group": expr})}
        rolled = time_match("start", since, split, user, key_id, model)
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

    @mapped_errors
    def find_usage(self, user: str | None = None, key_id: str | None = None, since: float = 0.0,
                   until: float | None = None, offset: int = 0, limit: int = 50) -> tuple[list[UsageEvent], int]:
        query = time_span("ts", since, until)
        for name, value in (("user", user), ("key_id", key_id)):
            if value is not None:
                query[name] = value
        shape = "events.of_key" if key_id is not None else "events.of_user" if user is not None else "events.newest"
        found, total = self._page(shape, query, offset, limit)
        return [event_from_document(d) for d in found], total


def _rollups_shape(user: str | None, key_id: str | None) -> str:
    """The query shape of per-key rollup rows: by key, else by person, else by start alone."""
    return "rollups.of_key" if key_id is not None else "rollups.of_user" if user is not None else "rollups.by_start"


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


def event_from_document(document: dict[str, Any]) -> UsageEvent:
    return UsageEvent(request_id=document.pop("_id"), **document)
