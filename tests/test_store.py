"""The store contract, one suite for every backend.

Backends: `sqlite` (a real file in tmp_path) and MongoDB, which is a real server when
`MONGODB_URI` is set (test id `mongo-real`, one throw-away database per test) and mongomock
otherwise (test id `mongo-mongomock`), so the output always says which one ran.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llmgateway.auth.keys import hash_key, make_record
from llmgateway.records import UsageEvent, UserRecord
from llmgateway.store import Store, StoreError, open_store
from llmgateway.store.base import BudgetHold
from llmgateway.store.mongo import INDEX_OPTIONS, MongoStore, declared_indexes
from tests import store_inspect
from tests.backends import MONGO, Backend, open_backend
from tests.conftest import wait_for

HOUR, DAY = 3600.0, 86400.0


@pytest.fixture(params=["sqlite", MONGO])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    yield from open_backend(request.param, tmp_path, monkeypatch)


@pytest.fixture(params=[MONGO])
def mongo(monkeypatch: pytest.MonkeyPatch) -> Iterator[MongoStore]:
    """The MongoDB backend alone, for what only it has (its id still says real server or mongomock)."""
    for backend in open_backend(MONGO, None, monkeypatch):
        yield backend.store


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


def event(rid: str, user: str = "u", key: str = "k", model: str = "m", ts: float = 1_000.0, p: int = 1,
          c: int = 2, cost: float = 0.5, estimated: bool = False) -> UsageEvent:
    return UsageEvent(ts=ts, request_id=rid, key_id=key, user=user, model=model, prompt_tokens=p,
                      completion_tokens=c, cost=cost, status=200, latency_ms=1.0, streamed=False,
                      estimated=estimated, endpoint="/v1/chat/completions")


# Keys


def test_keys_round_trip_by_hash_only(store: Store) -> None:
    key, record = make_record("alice", "laptop", ["b", "a"], expires_days=1)
    store.insert_key(record)
    found = store.key_by_hash(hash_key(key))
    assert found == record
    assert found.models == ["a", "b"]
    assert store.key_by_hash(hash_key(key + "x")) is None


def test_a_key_id_or_hash_is_stored_once(store: Store) -> None:
    _, record = make_record("alice", "laptop")
    store.insert_key(record)
    with pytest.raises(StoreError):
        store.insert_key(record)
    assert len(store.list_keys()) == 1


def test_the_key_itself_is_never_stored(backend: Backend) -> None:
    key, record = make_record("alice", "laptop")
    backend.store.insert_key(record)
    raw = backend.raw()
    assert record.hash.encode() in raw  # the dump really holds the key's record
    assert key.encode() not in raw
    assert key[len("sk-lgw-"):].encode() not in raw


def test_list_and_revoke(store: Store) -> None:
    records = [make_record(owner, name)[1] for owner, name in [("a", "1"), ("b", "2"), ("a", "3")]]
    for r in records:
        store.insert_key(r)
    assert [r.name for r in store.list_keys(owner="a")] == ["1", "3"]
    revoked = store.revoke_key(records[0].id)
    assert revoked is not None and not revoked.active
    assert [r.name for r in store.list_keys(owner="a", active_only=True)] == ["3"]
    assert [r.name for r in store.list_keys(active_only=True)] == ["2", "3"]
    assert store.revoke_key("key_missing") is None


def test_touch_keeps_the_latest_use(store: Store) -> None:
    _, record = make_record("a", "n")
    _, other = make_record("a", "m")
    store.insert_key(record)
    store.insert_key(other)
    store.touch_keys({record.id: 200.0})
    store.touch_keys({record.id: 100.0, other.id: 50.0})
    store.touch_keys({})
    assert {r.id: r.last_used for r in store.list_keys()} == {record.id: 200.0, other.id: 50.0}


def test_key_limits_round_trip(store: Store) -> None:
    key, record = make_record("a", "n")
    record.limits = {"requests_per_minute": 60.0}
    store.insert_key(record)
    assert store.key_by_hash(hash_key(key)).limits == {"requests_per_minute": 60.0}
    changed = store.update_key(record.id, {"limits": {"tokens_per_day": 1e6, "cost_per_month": 12.5}})
    assert changed is not None and changed.limits == {"tokens_per_day": 1e6, "cost_per_month": 12.5}
    assert store.key_by_hash(hash_key(key)).limits == {"tokens_per_day": 1e6, "cost_per_month": 12.5}
    assert store.update_key(record.id, {"limits": {}}).limits == {}
    assert store.update_key("key_missing", {"limits": {"x": 1.0}}) is None


# Users


def test_a_new_key_owner_becomes_a_user(store: Store) -> None:
    _, record = make_record("zoe", "n")
    store.insert_key(record)
    zoe = store.get_user("zoe")
    assert zoe is not None and zoe.created > 0 and zoe.limits == {} and not zoe.is_admin


def test_upsert_user_updates_profile_and_keeps_the_rest(store: Store) -> None:
    first = store.upsert_user(UserRecord("ann", "Ann", "ann@x", created=100.0, last_login=200.0))
    assert first == UserRecord("ann", "Ann", "ann@x", created=100.0, last_login=200.0)
    store.set_agreement("ann", "2026-01")
    store.set_user_limits("ann", {"tokens_per_day": 500.0})
    again = store.upsert_user(UserRecord("ann", "Ann B", "b@x", is_admin=True, created=999.0, last_login=300.0,
                                         agreement_version="old", limits={"ignored": 1.0}))
    assert again == UserRecord("ann", "Ann B", "b@x", is_admin=True, created=100.0, last_login=300.0,
                               agreement_version="2026-01", limits={"tokens_per_day": 500.0})
    assert store.get_user("ann") == again
    # An update that knows no login time leaves the last one.
    assert store.upsert_user(UserRecord("ann", "Ann C")).last_login == 300.0


def test_a_new_user_without_a_creation_time_gets_now(store: Store) -> None:
    before = time.time()
    assert before <= store.upsert_user(UserRecord("bo")).created <= time.time()


def test_users_agreement_limits_and_listing(store: Store) -> None:
    assert store.get_user("nobody") is None
    assert store_inspect.list_users(store) == []
    store.upsert_user(UserRecord("cy", created=1.0))
    store.set_agreement("cy", "v1")
    store.set_agreement("cy", "v2")
    assert store.get_user("cy").agreement_version == "v2"
    created = store.set_user_limits("al", {"requests_per_minute": 5.0})
    assert created.username == "al" and created.limits == {"requests_per_minute": 5.0} and created.created > 0
    assert store.set_user_limits("al", {}).limits == {}
    store.set_agreement("di", "v1")
    assert [u.username for u in store_inspect.list_users(store)] == ["al", "cy", "di"]
    assert store.get_user("di").agreement_version == "v1"


# Usage


def test_usage_insert_is_idempotent_by_request_id(store: Store) -> None:
    assert store.insert_usage([event("r1"), event("r2")]) == 2
    assert store.insert_usage([event("r2"), event("r3")]) == 1
    assert store.insert_usage([event("r3", p=99)]) == 0
    assert store.insert_usage([]) == 0
    assert store_inspect.count_usage(store) == 3
    assert store_inspect.usage_events(store) == [event("r1"), event("r2"), event("r3")]


def cost_hold(counter: str = "user:u:cost_d:d1", amount: int = 400_000, limit: int = 2_000_000,
              who: str = "u") -> BudgetHold:
    return BudgetHold(counter, "user", who, 500.0, False, (), 1_000_000, amount, limit)


def test_budget_holds_count_until_their_event_is_stored(store: Store) -> None:
    store.insert_usage([event("old", cost=0.5), event("before-period", ts=100.0, cost=9.0)])
    assert store.reserve_budgets("a", [cost_hold()], 1_000.0, 2_000.0) == (-1, [500_000])
    assert store.reserve_budgets("b", [cost_hold()], 1_000.0, 2_000.0) == (-1, [900_000])
    assert store.reserve_budgets("c", [cost_hold()], 1_000.0, 2_000.0) == (-1, [1_300_000])
    assert store.reserve_budgets("d", [cost_hold()], 1_000.0, 2_000.0) == (0, [1_700_000]), "0.4 more is over 2.0"
    assert store.held_budgets(1_000.0) == {"user:u:cost_d:d1": 1_200_000}
    store.insert_usage([event("a", cost=0.1)])
    assert store.reserve_budgets("d", [cost_hold()], 1_000.0, 2_000.0) == (-1, [1_400_000]), \
        "a's event replaced its hold: counted once, at what it cost"
    store.release_budgets("b")
    assert store.held_budgets(1_000.0) == {"user:u:cost_d:d1": 800_000}
    assert store.held_budgets(2_500.0) == {}, "expired holds count no more"
    assert store.purge_holds(1_000.0) == 1, "a's hold went once its event was stored"
    assert store.purge_holds(2_500.0) == 2


def test_budget_holds_are_all_or_nothing_and_token_budgets_count_their_models(store: Store) -> None:
    store.insert_usage([event("free", model="f", p=30, c=10), event("priced", model="m", p=500, c=500)])
    tokens = BudgetHold("key:k:tok_d:d1", "key_id", "k", 500.0, True, ("f",), 1, 50, 100)
    assert store.reserve_budgets("a", [cost_hold(limit=10_000_000), tokens], 1_000.0, 2_000.0) == (-1, [1_000_000, 40])
    assert store.reserve_budgets("b", [cost_hold(limit=10_000_000), tokens], 1_000.0, 2_000.0) == (1, [1_400_000, 90])
    assert store.held_budgets(1_000.0) == {"user:u:cost_d:d1": 400_000, "key:k:tok_d:d1": 50}, \
        "the refused call held nothing"


def test_budget_holds_never_let_two_processes_take_the_last_of_a_budget(store: Store) -> None:
    def take(i: int) -> bool:
        return store.reserve_budgets(f"r{i}", [cost_hold(amount=100_000, limit=1_000_000)], 1_000.0, 2_000.0)[0] < 0

    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(take, range(30)))
    assert taken.count(True) == 10


def test_usage_events_range(store: Store) -> None:
    store.insert_usage([event("a", ts=10.0), event("b", ts=20.0), event("c", ts=30.0)])
    assert [e.request_id for e in store_inspect.usage_events(store, since=20.0)] == ["b", "c"]
    assert [e.request_id for e in store_inspect.usage_events(store, since=10.0, until=30.0)] == ["a", "b"]


def test_usage_summary_groups_filters_and_ranges(store: Store) -> None:
    store.insert_usage([
        event("1", user="a", model="x", ts=DAY * 10, p=10, c=1, cost=1.0),
        event("2", user="a", model="y", ts=DAY * 10 + 5, p=20, c=2, cost=2.0, estimated=True),
        event("3", user="b", model="x", ts=DAY * 11, p=30, c=3, cost=4.0),
    ])
    by_user = {r["group"]: r for r in store.usage_summary("user")}
    assert by_user["a"]["prompt_tokens"] == 30 and by_user["a"]["requests"] == 2 and by_user["a"]["estimated"] == 1
    assert by_user["b"]["cost"] == 4.0
    by_day = store.usage_summary("day")
    assert [(r["group"], r["requests"]) for r in by_day] == [("1970-01-11", 2), ("1970-01-12", 1)]
    only_x = store.usage_summary("model", model="x")
    assert [(r["group"], r["completion_tokens"]) for r in only_x] == [("x", 4)]
    assert [r["group"] for r in store.usage_summary("key", user="b")] == ["k"]
    assert store.usage_summary("user", since=DAY * 11) == [
        {"group": "b", "requests": 1, "prompt_tokens": 30, "completion_tokens": 3, "cost": 4.0, "estimated": 0}
    ]
    assert store.usage_summary("key", until=DAY * 10) == []
    with pytest.raises(StoreError):
        store.usage_summary("colour")


def test_usage_by_day_splits_at_utc_midnight(store: Store) -> None:
    midnight = DAY * 20  # 1970-01-21T00:00:00Z
    store.insert_usage([
        event("late", model="y", ts=midnight - 0.5, p=1, cost=0.25),
        event("late2", model="x", ts=midnight - 1, p=2, cost=0.5, estimated=True),
        event("early", model="x", ts=midnight, p=4, cost=1.0),
        event("early2", model="x", ts=midnight + 1, p=8, cost=2.0),
        event("other-user", user="v", model="x", ts=midnight, p=16),
        event("old", model="x", ts=midnight - DAY - 1),
    ])
    rows = store.usage_by_day(midnight - DAY, user="u")
    assert rows == [
        {"day": "1970-01-20", "model": "x", "requests": 1, "prompt_tokens": 2, "completion_tokens": 2, "cost": 0.5,
         "estimated": 1},
        {"day": "1970-01-20", "model": "y", "requests": 1, "prompt_tokens": 1, "completion_tokens": 2, "cost": 0.25,
         "estimated": 0},
        {"day": "1970-01-21", "model": "x", "requests": 2, "prompt_tokens": 12, "completion_tokens": 4, "cost": 3.0,
         "estimated": 0},
    ]
    assert [r["day"] for r in store.usage_by_day(midnight - DAY, until=midnight)] == ["1970-01-20", "1970-01-20"]
    assert [r["prompt_tokens"] for r in store.usage_by_day(midnight, key_id="k")] == [28]
    assert store.usage_by_day(midnight, key_id="other") == []


def test_delete_usage_before(store: Store) -> None:
    store.insert_usage([event("a", ts=10.0), event("b", ts=20.0), event("c", ts=30.0)])
    assert store.delete_usage_before(20.0) == 1
    assert store.delete_usage_before(20.0) == 0
    assert [e.request_id for e in store_inspect.usage_events(store)] == ["b", "c"]
    assert store.delete_usage_before(1e12) == 2
    assert store_inspect.count_usage(store) == 0


# Rollups

BASE = DAY * 100  # a UTC midnight


def mixed_events(prefix: str, n: int) -> list[UsageEvent]:
    """`n` events spread over two days, three users, two keys and two models."""
    return [
        event(f"{prefix}{i}", user=f"u{i % 3}", key=f"k{i % 2}", model=f"m{i % 4 // 2}",
              ts=BASE + (i * 1777.0) % (2 * DAY), p=i, c=2 * i, cost=0.25 * (i % 5), estimated=i % 7 == 0)
        for i in range(n)
    ]


def expected_rollups(events: list[UsageEvent], bucket: str) -> list[dict]:
    size = HOUR if bucket == "hour" else DAY
    sums: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
    for e in events:
        row = sums[((e.ts // size) * size, e.user, e.key_id, e.model)]
        for i, value in enumerate((1, e.prompt_tokens, e.completion_tokens, e.cost, int(e.estimated))):
            row[i] += value
    return [
        {"bucket": bucket, "start": start, "user": user, "key_id": key, "model": model, "requests": s[0],
         "prompt_tokens": s[1], "completion_tokens": s[2], "cost": s[3], "estimated": s[4]}
        for (start, user, key, model), s in sorted(sums.items())
    ]


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_rollups_are_the_sums_of_the_raw_events(store: Store, bucket: str) -> None:
    events = mixed_events("a", 60)
    store.insert_usage(events)
    expected = expected_rollups(events, bucket)
    assert store.rollup_usage(bucket, BASE, BASE + 2 * DAY) == len(expected)
    assert store_inspect.usage_rollups(store, bucket) == expected
    # Twice gives the same rows.
    assert store.rollup_usage(bucket, BASE, BASE + 2 * DAY) == len(expected)
    assert store_inspect.usage_rollups(store, bucket) == expected
    # More events, then a re-run: the rows follow.
    more = mixed_events("b", 10)
    store.insert_usage(more)
    updated = expected_rollups(events + more, bucket)
    assert updated != expected
    store.rollup_usage(bucket, BASE, BASE + 2 * DAY)
    assert store_inspect.usage_rollups(store, bucket) == updated
    totals = store.usage_summary("user")
    assert sum(r["requests"] for r in store_inspect.usage_rollups(store, bucket)) == \
        sum(r["requests"] for r in totals) == 70
    # Rows whose events are gone go too.
    store.delete_usage_before(BASE + 2 * DAY)
    assert store.rollup_usage(bucket, BASE, BASE + 2 * DAY) == 0
    assert store_inspect.usage_rollups(store, bucket) == []


def test_rollup_touches_only_its_range_and_bucket(store: Store) -> None:
    events = mixed_events("a", 60)
    store.insert_usage(events)
    store.rollup_usage("hour", BASE, BASE + 2 * DAY)
    store.rollup_usage("day", BASE, BASE + 2 * DAY)
    hours_before = store_inspect.usage_rollups(store, "hour")
    store.insert_usage([event("late", ts=BASE + 30 * HOUR + 5), event("early", ts=BASE + 2 * HOUR + 5)])
    # A range starting mid-hour covers the hours that start inside it only.
    written = store.rollup_usage("hour", BASE + 29.5 * HOUR, BASE + 31 * HOUR)
    assert written == len(expected_rollups([e for e in events if 30 * HOUR <= e.ts - BASE < 31 * HOUR], "hour")) + 1
    after = store_inspect.usage_rollups(store, "hour")
    changed = [r for r in after if r not in hours_before]
    assert [(r["start"], r["user"], r["requests"]) for r in changed] == [(BASE + 30 * HOUR, "u", 1)]
    assert len(after) == len(hours_before) + 1
    assert store_inspect.usage_rollups(store, "day") == expected_rollups(events, "day")


def test_usage_rollups_filters_and_orders(store: Store) -> None:
    events = mixed_events("a", 60)
    store.insert_usage(events)
    store.rollup_usage("hour", BASE, BASE + 2 * DAY)
    hour = expected_rollups(events, "hour")
    assert store_inspect.usage_rollups(store, "hour", since=BASE + DAY) == [r for r in hour if r["start"] >= BASE + DAY]
    assert store_inspect.usage_rollups(store, "hour", until=BASE + HOUR * 5) == \
        [r for r in hour if r["start"] < BASE + HOUR * 5]
    assert store_inspect.usage_rollups(store, "hour", user="u1", key_id="k0", model="m1") == [
        r for r in hour if (r["user"], r["key_id"], r["model"]) == ("u1", "k0", "m1")
    ]
    assert store_inspect.usage_rollups(store, "day") == []
    with pytest.raises(StoreError):
        store.rollup_usage("week", 0, 1)
    with pytest.raises(StoreError):
        store_inspect.usage_rollups(store, "minute")


# Leases and claims


def test_lease_is_exclusive_until_it_expires(store: Store) -> None:
    assert store.acquire_lease("rollup", "a", 30)
    assert not store.acquire_lease("rollup", "b", 30)
    assert store.acquire_lease("rollup", "a", 30)  # the holder renews
    assert store.acquire_lease("other", "b", 30)  # leases are independent
    assert store.acquire_lease("rollup", "a", 0.05)
    wait_for(lambda: store.acquire_lease("rollup", "b", 30), timeout=5, what="the short lease to expire")
    assert not store.acquire_lease("rollup", "a", 30)


def test_claim_once(store: Store) -> None:
    later = time.time() + 60
    assert store.claim_once("saml-assertion", "id-1", later)
    assert not store.claim_once("saml-assertion", "id-1", later + 60)
    assert store.is_claimed("saml-assertion", "id-1")
    assert not store.is_claimed("saml-assertion", "id-2")
    assert store.claim_once("session-logout", "id-1", later)  # namespaces are apart


def test_an_expired_claim_can_be_claimed_again_and_purged(store: Store) -> None:
    now = time.time()
    assert store.claim_once("ns", "gone", now - 1)
    assert not store.is_claimed("ns", "gone")
    assert store.claim_once("ns", "gone", now + 60)
    assert store.is_claimed("ns", "gone")
    store.claim_once("ns", "old1", now - 10)
    store.claim_once("ns", "old2", now - 5)
    assert store.purge_claims(now) == 2
    assert store.purge_claims(now) == 0
    assert store.is_claimed("ns", "gone")
    assert store.purge_claims(now + 120) == 1
    assert store.claim_once("ns", "gone", now + 60)


# Concurrency: exactly one winner


ITEMS = 200


def _take_all(store: Store, what: str, me: int) -> list[bool]:
    """Try every item once: claim it, or take its lease as holder `me`."""
    if what == "claim":
        return [store.claim_once("race", f"item-{i}", time.time() + 60) for i in range(ITEMS)]
    return [store.acquire_lease(f"lease-{i}", f"holder-{me}", 60) for i in range(ITEMS)]


def _race_in_process(url: str, what: str, barrier: threading.Barrier, results: multiprocessing.Queue, me: int) -> None:
    store = open_store(url)
    store.ping()  # connect before the start line, so the race is between the takes themselves
    barrier.wait(timeout=30)
    results.put(_take_all(store, what, me))
    store.close()


def race(backend: Backend, what: str, n: int) -> list[list[bool]]:
    """`n` takers try every item at once: SQLite from processes, MongoDB from threads; one outcome list each."""
    if backend.name == "sqlite":
        ctx = multiprocessing.get_context("fork")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_race_in_process, args=(backend.url, what, barrier, results, i)) for i in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        return outcomes
    if backend.name != "mongo-real":
        pytest.skip("atomicity under concurrency is the MongoDB server's; mongomock cannot show it")
    barrier = threading.Barrier(n)

    def one(me: int) -> list[bool]:
        barrier.wait(timeout=30)
        return _take_all(backend.store, what, me)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("what", ["claim", "lease"])
def test_concurrent_takers_have_exactly_one_winner(backend: Backend, what: str) -> None:
    outcomes = race(backend, what, n=6)
    winners = [sum(taken) for taken in zip(*outcomes, strict=True)]
    assert winners == [1] * ITEMS


# Backend specifics


def test_sqlite_init_upgrades_a_database_of_the_first_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE users (username TEXT PRIMARY KEY, display_name TEXT NOT NULL DEFAULT '',
            email TEXT NOT NULL DEFAULT '', is_admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
            last_login REAL, agreement_version TEXT);
        CREATE TABLE api_keys (id TEXT PRIMARY KEY, owner TEXT NOT NULL REFERENCES users(username),
            name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 1,
            created REAL NOT NULL, expires REAL, last_used REAL, models TEXT NOT NULL DEFAULT '[]');
        INSERT INTO users (username, created) VALUES ('old', 1.0);
        INSERT INTO api_keys (id, owner, name, hash, prefix, created) VALUES ('key_old', 'old', 'n', 'h', 'p', 1.0);
    """)
    old.close()
    store = open_store(f"sqlite:///{path}")
    store.init()
    store.init()
    assert store.key_by_hash("h").limits == {}
    assert store.update_key("key_old", {"limits": {"rpm": 2.0}}).limits == {"rpm": 2.0}
    assert store.get_user("old").limits == {}
    assert store.set_user_limits("old", {"rpm": 1.0}).created == 1.0
    assert store.claim_once("ns", "x", time.time() + 5)
    store.close()


def test_locked_database_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = open_store(f"sqlite:///{path}?timeout=0.1")
    store.init()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.insert_usage([event("r")])
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.insert_usage([event("r")]) == 1


def test_mongo_indexes(mongo: MongoStore) -> None:
    """`init` makes exactly the indexes of the query table, with their options, and no superseded one."""
    declared = declared_indexes()
    for collection in mongo.db.list_collection_names():
        found = {tuple(i["key"]): i for i in mongo.db[collection].index_information().values()}
        assert set(found) == {(("_id", 1),), *declared.get(collection, [])}, collection
        for keys, options in INDEX_OPTIONS.items():
            if keys[0] == collection:
                assert {name: found[keys[1]].get(name) for name in options} == options
    assert INDEX_OPTIONS[("claims", (("expires_at", 1),))] == {"expireAfterSeconds": 3600}
    assert INDEX_OPTIONS[("api_keys", (("hash", 1),))] == {"unique": True}


def test_mongo_urls_and_timeouts() -> None:
    store = open_store("mongodb://127.0.0.1:1/")
    assert isinstance(store, MongoStore) and store.db.name == "llmgateway"
    assert store.client.options.server_selection_timeout == 5
    store.close()
    store = open_store("mongodb://h1:1,h2:2/gw?serverSelectionTimeoutMS=150&replicaSet=rs")
    assert store.db.name == "gw" and store.client.options.server_selection_timeout == 0.15
    store.close()


def test_mongo_errors_carry_no_credentials() -> None:
    store = open_store("mongodb://alice:s%40cret-pw@127.0.0.1:1/gw?serverSelectionTimeoutMS=100")
    with pytest.raises(StoreError) as caught:
        store.ping()
    message = str(caught.value)
    assert "127.0.0.1:1/gw" in message and "s@cret-pw" not in message and "s%40cret-pw" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    from pymongo.errors import OperationFailure

    leaked = store.error(OperationFailure("auth failed for alice:s%40cret-pw and s@cret-pw"))
    assert "cret-pw" not in str(leaked)
    store.close()


def test_bad_urls() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("postgres://x")
    with pytest.raises(StoreError, match="timeout"):
        open_store("sqlite:////tmp/x.db?timeout=soon")
    with pytest.raises(StoreError, match="cannot open"):
        open_store("sqlite:////proc/nope/x.db").ping()
    with pytest.raises(StoreError, match="MongoDB store") as caught:
        open_store("mongodb://bob:hunter2@127.0.0.1:port/gw")
    assert "hunter2" not in str(caught.value)
