"""What the tests read straight from a store to check what it holds: no caller of the store needs these.

One function per read, for either backend, on the store's own connection (SQLite: this thread's;
MongoDB: its database) and with the backend's own row conversions. On MongoDB each query is
hinted to its index in the store's query table, so tests/test_store_mongo_faults.py checks these
reads as it checks the store's.
"""

from __future__ import annotations

from typing import Any

from llmgateway.records import UsageEvent, UserRecord
from llmgateway.store import BUCKETS, RollupRow, Store, StoreError
from llmgateway.store.mongo import QUERIES, MongoStore
from llmgateway.store.mongo.keys_people import user_from_document as mongo_user
from llmgateway.store.mongo.usage import event_from_document as mongo_event
from llmgateway.store.sqlite import SQLiteStore
from llmgateway.store.sqlite.keys_people import USER_COLUMNS
from llmgateway.store.sqlite.keys_people import user_from_row as sqlite_user
from llmgateway.store.sqlite.usage import ROLLUP_COLUMNS, USAGE_COLUMNS
from llmgateway.store.sqlite.usage import event_from_row as sqlite_event


def list_users(store: Store) -> list[UserRecord]:
    """Every user, ordered by username."""
    if isinstance(store, MongoStore):
        return [mongo_user(d) for d in _find(store, "users.by_id", {})]
    return [sqlite_user(r) for r in _sql(store, f"SELECT {USER_COLUMNS} FROM users ORDER BY username")]


def count_usage(store: Store) -> int:
    """How many usage events the store holds."""
    if isinstance(store, MongoStore):
        # The collection's metadata count: no scan (exact but after an unclean shutdown, until the next validate).
        return store.db.usage_events.estimated_document_count()
    return _sql(store, "SELECT count(*) FROM usage_events")[0][0]


def usage_events(store: Store, since: float = 0.0, until: float | None = None) -> list[UsageEvent]:
    """The raw events with ts in [since, until), ordered by ts, then request id."""
    if isinstance(store, MongoStore):
        return [mongo_event(d) for d in _find(store, "events.by_ts", _range("ts", since, until))]
    rows = _sql(store, f"SELECT {USAGE_COLUMNS} FROM usage_events WHERE ts >= ? AND ts < ? ORDER BY ts, request_id",
                (since, _until(until)))
    return [sqlite_event(r) for r in rows]


def usage_rollups(store: Store, bucket: str, since: float = 0.0, until: float | None = None, user: str | None = None,
                  key_id: str | None = None, model: str | None = None) -> list[RollupRow]:
    """Rollup rows whose bucket start lies in [since, until), ordered by start, user, key, model."""
    if bucket not in BUCKETS:
        raise StoreError(f"unknown rollup bucket {bucket!r} (use {' or '.join(BUCKETS)})")
    equal = {name: value for name, value in (("user", user), ("key_id", key_id), ("model", model)) if value is not None}
    if isinstance(store, MongoStore):
        shape = ("rollups.of_key" if key_id is not None else "rollups.of_user" if user is not None
                 else "rollups.by_start")
        query = {"bucket": bucket, **_range("start", since, until), **equal}
        return [RollupRow(**d) for d in _find(store, shape, query, {"_id": False, "generation": False})]
    where = "".join(f" AND {name} = ?" for name in equal)
    rows = _sql(store, f"SELECT {ROLLUP_COLUMNS} FROM usage_rollups WHERE bucket = ? AND start >= ? AND start < ?"
                f"{where} ORDER BY start, user, key_id, model", (bucket, since, _until(until), *equal.values()))
    return [RollupRow(**dict(zip(ROLLUP_COLUMNS.split(", "), r, strict=True))) for r in rows]


def _sql(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    assert isinstance(store, SQLiteStore), type(store)
    return store._conn().execute(sql, params).fetchall()


def _find(store: MongoStore, shape: str, query: dict[str, Any], projection: dict[str, Any] | None = None) -> Any:
    """The query hinted to the index of `shape` and in its order, as the store's own reads are."""
    found = QUERIES[shape]
    return store.db[found.collection].find(query, projection).hint(list(found.index)).sort(list(found.sort))


def _range(field: str, since: float, until: float | None) -> dict[str, Any]:
    span: dict[str, float] = {"$gte": since}
    if until is not None:
        span["$lt"] = until
    return {field: span}


def _until(until: float | None) -> float:
    return until if until is not None else float("inf")

