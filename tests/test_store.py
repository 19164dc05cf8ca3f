"""The store contract, on a real SQLite file (the MongoDB backend will join this suite)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmgateway.keys import hash_key, make_record
from llmgateway.records import UsageEvent
from llmgateway.store import Store, StoreError, open_store


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    s.init()
    yield s
    s.close()


def event(rid: str, user: str = "u", key: str = "k", model: str = "m", ts: float = 1_000.0, p: int = 1,
          c: int = 2, cost: float = 0.5, estimated: bool = False) -> UsageEvent:
    return UsageEvent(ts=ts, request_id=rid, key_id=key, user=user, model=model, prompt_tokens=p,
                      completion_tokens=c, cost=cost, status=200, latency_ms=1.0, streamed=False,
                      estimated=estimated, endpoint="/v1/chat/completions")


def test_keys_round_trip_by_hash_only(store: Store) -> None:
    key, record = make_record("alice", "laptop", ["b", "a"], expires_days=1)
    store.insert_key(record)
    found = store.key_by_hash(hash_key(key))
    assert found == record
    assert found.models == ["a", "b"]
    assert store.key_by_hash(hash_key(key + "x")) is None


def test_the_key_itself_is_never_stored(store: Store, tmp_path: Path) -> None:
    key, record = make_record("alice", "laptop")
    store.insert_key(record)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
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
    assert store.revoke_key("key_missing") is None


def test_touch_keeps_the_latest_use(store: Store) -> None:
    _, record = make_record("a", "n")
    store.insert_key(record)
    store.touch_keys({record.id: 200.0})
    store.touch_keys({record.id: 100.0})
    assert store.list_keys()[0].last_used == 200.0


def test_usage_insert_is_idempotent_by_request_id(store: Store) -> None:
    assert store.insert_usage([event("r1"), event("r2")]) == 2
    assert store.insert_usage([event("r2"), event("r3")]) == 1
    assert store.count_usage() == 3
    assert [e.request_id for e in store.usage_events()] == ["r1", "r2", "r3"]


def test_usage_summary_groups_filters_and_ranges(store: Store) -> None:
    day = 86_400.0
    store.insert_usage([
        event("1", user="a", model="x", ts=day * 10, p=10, c=1, cost=1.0),
        event("2", user="a", model="y", ts=day * 10 + 5, p=20, c=2, cost=2.0, estimated=True),
        event("3", user="b", model="x", ts=day * 11, p=30, c=3, cost=4.0),
    ])
    by_user = {r["group"]: r for r in store.usage_summary("user")}
    assert by_user["a"]["prompt_tokens"] == 30 and by_user["a"]["requests"] == 2 and by_user["a"]["estimated"] == 1
    assert by_user["b"]["cost"] == 4.0
    by_day = store.usage_summary("day")
    assert [r["group"] for r in by_day] == ["1970-01-11", "1970-01-12"]
    only_x = store.usage_summary("model", model="x")
    assert [(r["group"], r["completion_tokens"]) for r in only_x] == [("x", 4)]
    assert store.usage_summary("user", since=day * 11) == [
        {"group": "b", "requests": 1, "prompt_tokens": 30, "completion_tokens": 3, "cost": 4.0, "estimated": 0}
    ]
    assert store.usage_summary("key", until=day * 10) == []
    with pytest.raises(StoreError):
        store.usage_summary("colour")


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


def test_bad_urls() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("postgres://x")
    with pytest.raises(StoreError, match="timeout"):
        open_store("sqlite:////tmp/x.db?timeout=soon")
    with pytest.raises(StoreError, match="cannot open"):
        open_store("sqlite:////proc/nope/x.db").ping()
