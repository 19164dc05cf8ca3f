"""What mongomock does not model about the MongoDB store, checked at the pymongo boundary.

mongomock (no MongoDB server can be installed on the development machines) accepts commands of
any size, never fails a write concern, never fails over and plans no query. So these tests put a
recording fake at the pymongo Collection boundary (`Recording`: it passes every call on to a
mongomock collection and keeps the filter, order, hint and command it carried; `Scale`: it answers
aggregations with rows at the benchmark's scale and keeps the write commands without running
them) or make a mongomock collection method raise what a real server raises. They check:

- command sizes: every command a rollup rebuild at the benchmark's scale sends encodes (with
  `bson`, as pymongo sends it) under MongoDB's 16 MiB document limit;
- write-concern and transient failures: the ledger spools the batch and replays it later, once;
- indexes: every query the store runs is served by an index of the store's query table;
- types: OverflowError and InvalidDocument reach the caller as StoreError, without credentials;
- start-up: a changed TTL goes through collMod, a stuck index build ends the start with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest
from bson.errors import InvalidDocument
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
)

from llmgateway.auth.keys import make_record
from llmgateway.records import AdminToken, AuditEntry, ModelRecord, UsageEvent, UserRecord
from llmgateway.store import StoreError, open_store
from llmgateway.store import mongo as mongo_module
from llmgateway.store.base import BudgetHold
from llmgateway.store.mongo import ID, QUERIES, Index, MongoStore, declared_indexes
from llmgateway.store.mongo import connection as mongo_connection
from llmgateway.usage.ledger import UsageLedger
from tests import store_inspect
from tests.backends import _mongomock_client

MAX_BSON = 16 * 1024 * 1024
SECRET_URL = "mongodb://alice:s3cret-pw@mongomock/llmgateway"
DAY = 86400.0


@dataclass
class Call:
    """One call the store made on a collection: what a server's planner or size check would see."""

    collection: str
    op: str
    filter: dict[str, Any] = field(default_factory=dict)
    sort: Index = ()
    hint: Index | None = None
    limit: int = 0
    command: dict[str, Any] | None = None


class RecordingCursor:
    """A mongomock cursor that notes the order, hint and limit put on it."""

    def __init__(self, cursor: Any, call: Call) -> None:
        self._cursor, self.call = cursor, call

    def hint(self, index: list[tuple[str, int]]) -> RecordingCursor:
        self.call.hint = tuple(index)
        self._cursor = self._cursor.hint(index)
        return self

    def sort(self, order: list[tuple[str, int]]) -> RecordingCursor:
        self.call.sort = tuple(order)
        self._cursor = self._cursor.sort(order)
        return self

    def skip(self, n: int) -> RecordingCursor:
        self._cursor = self._cursor.skip(n)
        return self

    def limit(self, n: int) -> RecordingCursor:
        self.call.limit = n
        self._cursor = self._cursor.limit(n)
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._cursor)


class Recording:
    """A collection at the pymongo boundary: every call goes on to mongomock and is kept in `calls`."""

    def __init__(self, collection: Any, calls: list[Call]) -> None:
        self._c, self.calls, self.name = collection, calls, collection.name

    def _note(self, op: str, query: dict[str, Any] | None = None, **kw: Any) -> Call:
        call = Call(self.name, op, query or {}, **kw)
        self.calls.append(call)
        return call

    def find(self, query: dict[str, Any] | None = None, projection: Any = None) -> RecordingCursor:
        return RecordingCursor(self._c.find(query, projection), self._note("find", query))

    def find_one(self, query: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        self._note("find", query, limit=1)
        return self._c.find_one(query, *args, **kwargs)

    def count_documents(self, query: dict[str, Any], hint: Any = None) -> int:
        self._note("count", query, hint=tuple(hint) if hint else None)
        return self._c.count_documents(query)

    def estimated_document_count(self) -> int:
        self._note("estimated_count")
        return self._c.estimated_document_count()

    def aggregate(self, pipeline: list[dict[str, Any]], hint: Any = None, **kwargs: Any) -> Any:
        self._note("aggregate", pipeline[0]["$match"], hint=tuple(hint) if hint else None)
        return self._c.aggregate(pipeline, **kwargs)

    def distinct(self, key: str, query: dict[str, Any] | None = None) -> list[Any]:
        self._note("distinct", query, sort=((key, 1),))
        return self._c.distinct(key, query)

    def bulk_write(self, requests: list[Any], **kwargs: Any) -> Any:
        for request in requests:
            self._note("write", request._filter)
        return self._c.bulk_write(requests, **kwargs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._c, name)
        if name in ("update_one", "find_one_and_update", "delete_one", "delete_many"):
            def write(query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
                self._note("write" if name != "delete_many" else "delete", query)
                return method(query, *args, **kwargs)
            return write
        return method


class RecordingDatabase:
    """A database whose collections are `Recording`s (commands and the rest go straight to mongomock)."""

    def __init__(self, db: Any) -> None:
        self._db, self.calls, self.name = db, [], db.name

    def __getitem__(self, name: str) -> Recording:
        return Recording(self._db[name], self.calls)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        return Recording(attr, self.calls) if isinstance(attr, mongomock.Collection) else attr


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[MongoStore]:
    """A MongoDB store on mongomock whose URL carries credentials (for the no-leak checks)."""
    client = _mongomock_client(monkeypatch)
    store = MongoStore(SECRET_URL, client=client)
    store.init()
    yield store
    client.drop_database("llmgateway")


def usage(rid: str, ts: float = 1000.0, user: str = "ann", key_id: str = "k1", model: str = "m",
          prompt: int = 1) -> UsageEvent:
    return UsageEvent(ts=ts, request_id=rid, key_id=key_id, user=user, model=model, prompt_tokens=prompt,
                      completion_tokens=2, cost=0.5, status=200, latency_ms=1.0, streamed=False, estimated=False,
                      endpoint="/v1/chat/completions")


# --- (a) command sizes at the benchmark's scale ----------------------------------------------


class Scale:
    """A collection at the pymongo boundary for a big store: aggregations answer `rows` groups, and
    writes are encoded as the commands pymongo would send (kept in `commands`), not run."""

    def __init__(self, name: str, rows: int, commands: list[tuple[str, int]]) -> None:
        self.name, self.rows, self.commands = name, rows, commands

    def aggregate(self, pipeline: list[dict[str, Any]], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Groups as a range of the benchmark's site holds them: 300,000 keys of 20,000 people."""
        self.commands.append(("aggregate", len(bson.encode({"aggregate": self.name, "pipeline": pipeline}))))
        names = list(pipeline[1]["$group"]["_id"])
        for i in range(self.rows):
            values = {"start": 1_700_006_400.0 + DAY * (i % 91), "user": f"user{i % 20_000:05d}",
                      "key_id": f"key_{i:016x}", "model": "llama-3-70b"}
            yield {"_id": {name: values[name] for name in names}, "requests": 3, "prompt_tokens": 300,
                   "completion_tokens": 200, "cost": 0.01, "estimated": 0}

    def bulk_write(self, requests: list[Any], **kwargs: Any) -> None:
        updates = [{"q": r._filter, "u": r._doc, "upsert": True} for r in requests]
        self.commands.append(("update", len(bson.encode({"update": self.name, "updates": updates}))))

    def delete_many(self, query: dict[str, Any]) -> None:
        size = len(bson.encode({"delete": self.name, "deletes": [{"q": query, "limit": 0}]}))
        self.commands.append(("delete", size))


def test_a_rollup_rebuild_at_scale_sends_only_commands_under_16_mib() -> None:
    """300,000 groups in the range (the benchmark's 300,000 keys, 1,000,000 events): the old
    stale-row delete listed every row id in one command and went past 16 MiB."""
    commands: list[tuple[str, int]] = []

    class ScaleDatabase:
        name = "llmgateway"

        def __getitem__(self, name: str) -> Scale:
            return Scale(name, 300_000, commands)

        def __getattr__(self, name: str) -> Scale:
            return self[name]

    store = MongoStore("mongodb://mongomock/llmgateway", client=mongomock.MongoClient())
    store.db = ScaleDatabase()  # type: ignore[assignment]
    assert store.rollup_usage("day", 1_700_006_400.0, 1_700_006_400.0 + 91 * DAY) == 300_000
    kinds = {kind for kind, _ in commands}
    assert kinds == {"aggregate", "update", "delete"}
    assert sum(1 for kind, _ in commands if kind == "delete") == 3  # per-key, per-user and per-model rows
    too_big = [(kind, size) for kind, size in commands if size >= MAX_BSON]
    assert not too_big, f"commands over 16 MiB: {too_big}"


# --- (b) write-concern and transient failures: the ledger spools, then replays once -----------


def write_concern_failure(original: Callable[..., Any]) -> Callable[..., Any]:
    """insert_many as a primary whose majority does not answer runs it: written there, then a write-concern error."""
    def insert_many(self: Any, documents: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        original(self, documents, *args, **kwargs)
        raise BulkWriteError({"writeErrors": [], "writeConcernErrors": [
            {"code": 64, "errmsg": "waiting for replication timed out"}], "nInserted": len(documents)})
    return insert_many


def raising(exc: Exception) -> Callable[..., Any]:
    def fail(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise exc
    return fail


FAILURES: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "write-concern": write_concern_failure,
    "AutoReconnect": lambda _: raising(AutoReconnect("connection closed")),
    "NotPrimaryError": lambda _: raising(NotPrimaryError("not primary")),
    "NetworkTimeout": lambda _: raising(NetworkTimeout("timed out")),
    "OverflowError": lambda _: raising(OverflowError("MongoDB can only handle up to 8-byte ints")),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_the_ledger_spools_a_batch_the_store_failed_and_replays_it_once(
        store: MongoStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    ledger = UsageLedger(store, str(tmp_path / "spool"), max_events=1000, batch=100)
    for i in range(5):
        ledger.append(usage(f"r{i}"))
    original = mongomock.Collection.insert_many
    with monkeypatch.context() as patched:
        patched.setattr(mongomock.Collection, "insert_many", FAILURES[failure](original))
        assert ledger.flush() == 0
    assert ledger.failing and len(ledger.spooled_files()) == 1
    assert ledger.flush() == 5
    assert ledger.spooled_files() == [] and not ledger.failing
    assert sorted(e.request_id for e in store_inspect.usage_events(store)) == [f"r{i}" for i in range(5)]


def test_duplicate_request_ids_alone_are_a_replay_not_a_failure(store: MongoStore) -> None:
    assert store.insert_usage([usage("r1")]) == 1
    assert store.insert_usage([usage("r1"), usage("r2")]) == 1


def test_a_token_count_past_64_bits_fails_as_a_store_error_and_the_ledger_keeps_it(
        store: MongoStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="OverflowError"):
        store.insert_usage([usage("big", prompt=2**64)])
    ledger = UsageLedger(store, str(tmp_path / "spool"), max_events=1000, batch=100)
    ledger.append(usage("big", prompt=2**64))
    assert ledger.flush() == 0
    assert len(ledger.spooled_files()) == 1


def test_a_failover_during_a_multi_document_delete_is_retried_once(store: MongoStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store.insert_usage([usage("old", ts=10.0), usage("new", ts=500.0)])
    original = mongomock.Collection.delete_many
    failures = [NotPrimaryError("not primary")]

    def delete_many(self: Any, *args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.Collection, "delete_many", delete_many)
    assert store.delete_usage_before(100.0) == 1
    failures[:] = [AutoReconnect("again"), AutoReconnect("and again")]
    with pytest.raises(StoreError, match="AutoReconnect"):
        store.purge_claims(0.0)


def test_a_rollup_upsert_that_loses_a_concurrent_insert_is_retried(store: MongoStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store.insert_usage([usage("a", ts=DAY + 5), usage("b", ts=DAY + 7, user="bo")])
    original = mongomock.Collection.bulk_write
    lost = [BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}],
                            "writeConcernErrors": [], "nInserted": 0})]

    def bulk_write(self: Any, requests: list[Any], **kwargs: Any) -> Any:
        if lost and self.name == "usage_rollups":
            raise lost.pop()
        return original(self, requests, **kwargs)

    monkeypatch.setattr(mongomock.Collection, "bulk_write", bulk_write)
    assert store.rollup_usage("day", DAY, 2 * DAY) == 2
    assert not lost
    assert sorted(r["user"] for r in store_inspect.usage_rollups(store, "day")) == ["ann", "bo"]


def test_a_rebuild_keeps_what_a_concurrent_rebuild_wrote_and_drops_stale_rows(
        store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica's whole rebuild lands between this one's upserts and its delete."""
    store.insert_usage([usage("a", ts=DAY + 5)])
    store.db.usage_rollups.insert_one({"_id": "stale, written before generations", "bucket": "day",
                                       "start": DAY, "user": "gone", "key_id": "k", "model": "m"})
    original = mongomock.Collection.delete_many
    other = [lambda: store.rollup_usage("day", DAY, 2 * DAY)]

    def delete_many(self: Any, *args: Any, **kwargs: Any) -> Any:
        if other and self.name == "usage_rollups":
            other.pop()()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.Collection, "delete_many", delete_many)
    store.rollup_usage("day", DAY, 2 * DAY)
    assert [r["user"] for r in store_inspect.usage_rollups(store, "day")] == ["ann"]


# --- (c) every query the store runs is served by an index of its table ---------------------


def predicates(query: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The fields `query` pins to one value and the fields it bounds by a range (a planner's index bounds);
    `$or`, `$ne`, unanchored regexes and the like only filter, they bound nothing."""
    equal: set[str] = set()
    ranged: set[str] = set()
    for name, condition in query.items():
        if name == "$and":
            for term in condition:
                more_equal, more_ranged = predicates(term)
                equal |= more_equal
                ranged |= more_ranged
        elif name.startswith("$"):
            continue
        elif not isinstance(condition, dict):
            equal.add(name)
        elif set(condition) <= {"$gte", "$gt", "$lte", "$lt"} or str(condition.get("$regex", "")).startswith("^"):
            ranged.add(name)
    return equal, ranged


def fields_read(query: dict[str, Any]) -> set[str]:
    """Every field a filter tests, inside `$and`, `$or` and `$not` too."""
    found: set[str] = set()
    for name, condition in query.items():
        if name in ("$and", "$or"):
            for term in condition:
                found |= fields_read(term)
        elif not name.startswith("$"):
            found.add(name)
    return found


def serves(index: Index, call: Call) -> bool:
    """Whether `index` answers `call` as an explain() review wants: the order needs no sort stage,
    and the scan is bounded by the index's leading fields, or stops early (it walks in the wanted
    order, or reads one entry), or reads index keys only (every field the filter tests is in the
    index, or is one its query shape declares it reads from documents)."""
    equal, ranged = predicates(call.filter)
    pinned = 0
    while pinned < len(index) and index[pinned][0] in equal:
        pinned += 1
    rest = index[pinned:]
    bounded = pinned > 0 or (bool(rest) and rest[0][0] in ranged)
    order = tuple(part for part in call.sort if part[0] not in equal)
    backwards = tuple((name, -direction) for name, direction in rest)
    in_order = order in (rest[:len(order)], backwards[:len(order)])
    declared_reads = {name for shape in QUERIES.values() if (shape.collection, shape.index) == (call.collection, index)
                      for name in shape.reads_documents}
    keys_only = fields_read(call.filter) <= {name for name, _ in index} | declared_reads
    return in_order and (bounded or bool(order) or call.limit == 1 or keys_only)


def sweep(store: MongoStore) -> None:
    """Call every store method with every filter its callers use, on a little data."""
    for owner, name in (("ann", "laptop"), ("ann", "ci"), ("bo", "lab")):
        store.insert_key(make_record(owner, name, ["m"] if name == "ci" else [])[1])
    keys = store.list_keys()
    store.key_by_hash(keys[0].hash)
    store.get_key(keys[0].id)
    store.list_keys(owner="ann", active_only=True)
    store.revoke_key(keys[1].id)
    store.update_key(keys[0].id, {"limits": {"requests_per_minute": 5.0}})
    store.update_key(keys[0].id, {"name": "renamed"})
    store.touch_keys({keys[0].id: 5.0})
    store.upsert_user(UserRecord("cy", "Cy", "cy@example.org"))
    store.get_user("cy")
    store_inspect.list_users(store)
    store.set_agreement("cy", "1")
    store.set_user_limits("cy", {"tokens_per_day": 5.0})
    store.update_user("cy", {"disabled": True})
    for kwargs in ({}, {"search": "A"}, {"admin": True}, {"admin": False, "disabled": False}, {"disabled": True}):
        store.find_users(**kwargs)
    for kwargs in ({}, {"owner": "ann"}, {"owner": "ann", "status": "active"}, {"model": "m"},
                   {"status": "revoked"}, {"status": "expired"}, {"search": "LAP"}):
        store.find_keys(**kwargs, now=1.0)
        store.find_keys(**kwargs, now=1.0, offset=1, limit=1)
    events = [usage(f"r{i}", ts=DAY * (i % 4) + i, user=("ann", "bo")[i % 2], key_id=f"k{i % 3}",
                    model=("m", "n")[i % 2]) for i in range(12)]
    store.insert_usage(events)
    store_inspect.count_usage(store)
    store_inspect.usage_events(store, 0.0, 3 * DAY)
    for bucket in ("hour", "day"):
        store.rollup_usage(bucket, 0.0, 4 * DAY)
    for kwargs in ({}, {"user": "ann"}, {"key_id": "k1"}, {"model": "m"}):
        store.usage_summary("user", 0.0, 4 * DAY, **kwargs)
        store_inspect.usage_rollups(store, "day", 0.0, 4 * DAY, **kwargs)
    store.usage_by_day(0.0, None, user="ann")
    store.usage_by_day(0.0, None, key_id="k1")
    store.usage_by_day(0.0, None)
    for group in ("user", "key", "model", "day"):
        for kwargs in ({}, {"user": "ann"}, {"key_id": "k1"}, {"model": "m"}):
            store.usage_report(group, 0.0, 2 * DAY, 4 * DAY, order="cost", offset=1, limit=2, **kwargs)
    for kwargs in ({}, {"user": "ann"}, {"key_id": "k1"}, {"user": "ann", "key_id": "k1", "since": DAY}):
        store.find_usage(**kwargs)
        store.find_usage(**kwargs, until=3 * DAY, offset=2, limit=2)
    store.delete_usage_before(DAY)
    for by, tokens in (("user", False), ("key_id", True)):
        hold = BudgetHold("c", by, "ann", 0.0, tokens, ("m",), 1, 1, 10**9)
        store.reserve_budgets(f"hold-{by}", [hold], 1.0, 100.0)
    store.held_budgets(1.0)
    store.release_budgets("hold-user")
    store.purge_holds(200.0)
    store.acquire_lease("rollups", "me", 60.0)
    store.claim_once("saml", "id-1", 10.0)
    store.is_claimed("saml", "id-1")
    store.purge_claims(20.0)
    store.insert_model(ModelRecord("m", {"upstreams": ["http://x"]}, 1.0, 1.0))
    store.update_model(ModelRecord("m", {"upstreams": ["http://y"]}, 1.0, 2.0))
    store.get_model("m")
    store.list_models()
    store.delete_model("m")
    store.insert_admin_token(AdminToken(id="t1", name="n", hash="h1", prefix="p", created_by="cy", created=1.0,
                                           expires=None))
    store.admin_token_by_hash("h1")
    store.list_admin_tokens()
    store.touch_admin_token("t1", 2.0)
    store.revoke_admin_token("t1")
    for i in range(3):
        store.insert_audit(AuditEntry(ts=float(i), actor="cy", via="api", source="", action="key.revoke",
                                      target=f"k{i}", details={}))
    for kwargs in ({}, {"actor": "cy"}, {"target": "k1"}, {"action": "key."}, {"via": "api", "since": 1.0}):
        store.find_audit(**kwargs)
        store.find_audit(**kwargs, offset=1, limit=1)
    store.init()


def test_every_query_the_store_runs_is_served_by_an_index_of_its_table(
        store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query shape the table lacks, or an index that does not serve the query it is hinted to
    (a scan, or a sort stage in memory), fails here. Deep offsets go through `_seek` too."""
    monkeypatch.setattr(mongo_connection, "DEEP_OFFSET", 0)
    recording = RecordingDatabase(store.db)
    store.db = recording  # type: ignore[assignment]
    sweep(store)
    declared = declared_indexes()
    unserved = []
    for call in recording.calls:
        if call.op == "estimated_count":
            assert not call.filter
            continue
        candidates = [*declared.get(call.collection, []), ID]
        if call.op in ("find", "count", "aggregate"):
            assert call.hint is not None, f"{call} is not hinted"
            candidates = [call.hint]
        if call.hint is not None:
            assert call.hint in (*declared.get(call.collection, []), ID), f"{call.hint} is not declared"
        if not any(serves(index, call) for index in candidates):
            unserved.append(call)
    assert not unserved, "\n".join(map(str, unserved))
    hinted = {(c.collection, c.hint) for c in recording.calls if c.hint is not None}
    unused = [name for name, shape in QUERIES.items() if name != "claims.ttl"
              and (shape.collection, shape.index) not in hinted
              and not any(c.collection == shape.collection and serves(shape.index, c) for c in recording.calls)]
    assert not unused, f"query shapes nothing ran: {unused}"


def test_the_checker_rejects_a_scan_and_a_sort_in_memory() -> None:
    """The model of the planner above is not vacuous: the old shapes of issue #17 fail it."""
    old_list_keys = Call("api_keys", "find", {}, sort=(("created", 1), ("_id", 1)))
    assert not serves((("created", -1), ("_id", 1)), old_list_keys)
    old_events_page = Call("usage_events", "find", {}, sort=(("ts", -1), ("_id", 1)))
    assert not serves((("ts", 1),), old_events_page)
    unanchored = Call("users", "count", {"$or": [{"_id": {"$regex": "ann"}}, {"email": {"$regex": "ann"}}]})
    assert not serves(ID, unanchored)
    assert serves((("_id", 1), ("email", 1)), unanchored)
    assert serves((("owner", 1), ("created", 1), ("_id", 1)),
                  Call("api_keys", "find", {"owner": "a"}, sort=(("created", -1), ("_id", -1))))


@pytest.mark.parametrize("deep", [0, 1_000])
def test_a_deep_offset_reads_the_same_page_as_skipping(store: MongoStore, monkeypatch: pytest.MonkeyPatch,
                                                        deep: int) -> None:
    """Ties on the first sort field straddle the offsets; `_seek` must land where skip() lands."""
    monkeypatch.setattr(mongo_connection, "DEEP_OFFSET", deep)
    for i in range(9):
        _, record = make_record(("ann", "bo")[i % 2], f"n{i}")
        record.created = float(i // 3)
        store.insert_key(record)
        store.insert_usage([usage(f"r{i}", ts=float(i // 4), user=("ann", "bo")[i % 2])])
        store.insert_audit(AuditEntry(ts=float(i // 3), actor="cy", via="api", source="", action="key.create",
                                      target="k", details={}))
        store.upsert_user(UserRecord(f"user{i}"))
    everything = {
        "keys": [k.id for k in store.find_keys(limit=100)[0]],
        "events": [e.request_id for e in store.find_usage(limit=100)[0]],
        "audit": [a.id for a in store.find_audit(limit=100)[0]],
        "users": [u.username for u in store.find_users(limit=100)[0]],
    }
    assert everything["keys"] == [k.id for k in sorted(store.list_keys(), key=lambda k: (-k.created, k.id))]
    for offset in range(0, 12):
        for limit in (1, 2, 5):
            assert [k.id for k in store.find_keys(offset=offset, limit=limit)[0]] == \
                everything["keys"][offset:offset + limit]
            assert [e.request_id for e in store.find_usage(offset=offset, limit=limit)[0]] == \
                everything["events"][offset:offset + limit]
            assert [a.id for a in store.find_audit(offset=offset, limit=limit)[0]] == \
                everything["audit"][offset:offset + limit]
            page, total = store.find_users(offset=offset, limit=limit)
            assert [u.username for u in page] == everything["users"][offset:offset + limit]
            assert total == len(everything["users"])
            assert store.find_keys(owner="ann", offset=offset, limit=limit)[1] == 5


# --- (d) every failure is a StoreError without credentials -----------------------------------


@pytest.mark.parametrize("exc", [
    InvalidDocument(f"BSON document too large (17825792 bytes), sent to {SECRET_URL}"),
    OverflowError("MongoDB can only handle up to 8-byte ints (alice:s3cret-pw)"),
    NotPrimaryError("not primary: mongodb://alice:s3cret-pw@db-0"),
    KeyError("s3cret-pw"),
])
def test_any_failure_is_a_store_error_without_credentials(store: MongoStore, monkeypatch: pytest.MonkeyPatch,
                                                          exc: Exception) -> None:
    monkeypatch.setattr(mongomock.Collection, "insert_many", raising(exc))
    with pytest.raises(StoreError) as caught:
        store.insert_usage([usage("r1")])
    assert type(exc).__name__ in str(caught.value)
    assert "s3cret" not in str(caught.value) and "alice:" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_refused_admin_change_stays_a_value_error(store: MongoStore) -> None:
    store.upsert_user(UserRecord("ann"))
    with pytest.raises(ValueError, match="cannot change") as caught:
        store.update_user("ann", {"username": "eve"})
    assert not isinstance(caught.value, StoreError)


# --- (e) start-up: TTL changes, stuck index builds, client options ---------------------------


def test_a_changed_claim_ttl_is_applied_with_collmod(store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """createIndexes refuses new options on an existing index (IndexOptionsConflict): the TTL goes
    through collMod, and nothing else is created on a store that has every index."""
    store.db.claims.drop_index([("expires_at", 1)])
    store.db.claims.create_index([("expires_at", 1)], expireAfterSeconds=60)
    sent: list[Any] = []
    created: list[Any] = []
    monkeypatch.setattr(store.db, "command", sent.append)
    monkeypatch.setattr(mongomock.Collection, "create_index", lambda self, keys, **kw: created.append(keys))
    store.init()
    assert sent == [{"collMod": "claims", "index": {"keyPattern": {"expires_at": 1}, "expireAfterSeconds": 3600}}]
    assert created == []


def test_init_drops_indexes_a_wider_one_superseded(store: MongoStore) -> None:
    store.db.usage_events.create_index([("ts", 1)])
    store.db.api_keys.create_index([("owner", 1), ("created", 1)])
    store.init()
    keys = {tuple(i["key"]) for name in ("usage_events", "api_keys")
            for i in store.db[name].index_information().values()}
    assert (("ts", 1),) not in keys and (("owner", 1), ("created", 1)) not in keys
    for collection, old in mongo_module.SUPERSEDED.items():
        assert not set(old) & set(declared_indexes().get(collection, [])), collection


def test_a_stuck_index_build_ends_the_start_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MongoStore(SECRET_URL, client=_mongomock_client(monkeypatch))
    monkeypatch.setattr(mongomock.Collection, "create_index", raising(
        ExecutionTimeout("operation exceeded time limit on mongodb://alice:s3cret-pw@db-1")))
    with pytest.raises(StoreError, match=r"did not finish within 30 s \(is a replica-set member down") as caught:
        store.init()
    assert "s3cret" not in str(caught.value) and str(caught.value).count("MongoDB store") == 1
    monkeypatch.setattr(mongomock.Collection, "create_index", raising(OperationFailure("not authorized")))
    with pytest.raises(StoreError, match="OperationFailure: not authorized") as caught:
        store.init()
    assert "did not finish" not in str(caught.value)


def test_client_options_are_set_and_the_url_wins() -> None:
    store = open_store("mongodb://127.0.0.1:1/")
    options = store.client.options
    assert options.retry_writes and options.retry_reads and options.server_selection_timeout == 5
    assert options.pool_options.socket_timeout == 30 and options.pool_options.connect_timeout == 5
    assert store.client.write_concern.document == {"w": "majority", "wtimeout": 5000}
    store.close()
    store = open_store("mongodb://127.0.0.1:1/gw?w=1&retryWrites=false&socketTimeoutMS=1000")
    options = store.client.options
    assert not options.retry_writes and options.pool_options.socket_timeout == 1
    assert store.client.write_concern.document == {"w": 1, "wtimeout": 5000}
    store.close()
    store = open_store("mongodb://127.0.0.1:1/gw?timeoutMS=2000")
    assert store.client.options.timeout == 2 and store.client.options.pool_options.socket_timeout is None
    assert store.client.write_concern.document == {"w": "majority"}
    store.close()


def test_the_readme_lists_every_query_shape_with_its_index() -> None:
    """The README's query table is the store's: a shape added or an index changed without it fails."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `")}
    for name, shape in QUERIES.items():
        assert name in rows, name
        assert ", ".join(f"{f} {d:+d}" for f, d in shape.index) in rows[name], name
        assert shape.why in rows[name], name
