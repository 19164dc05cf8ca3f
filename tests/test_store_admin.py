"""The store contract of the admin API, one suite for every backend.

People, keys, the model catalog, admin tokens, the audit log and usage reports over rollups.
Backends as in test_store.py: `sqlite` (a real file) and MongoDB (`mongo-real` when `MONGODB_URI`
is set, `mongo-mongomock` otherwise), so the output always says which one ran.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmgateway.records import AdminToken, AuditEntry, KeyRecord, ModelRecord, UsageEvent, UserRecord
from llmgateway.store import Store, StoreError, open_store
from llmgateway.store.base import GROUPS, UsageRow
from llmgateway.store.mongo import MongoStore
from tests.backends import BACKENDS, MONGO, Backend, open_backend

DAY = 86400.0
BASE = DAY * 200  # a UTC midnight: 1970-07-20
NOW = 1_000_000.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    yield from open_backend(request.param, tmp_path, monkeypatch)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


@pytest.fixture(params=[MONGO])
def mongo(monkeypatch: pytest.MonkeyPatch) -> Iterator[MongoStore]:
    for backend in open_backend(MONGO, None, monkeypatch):
        yield backend.store


def key(key_id: str, owner: str = "ann", name: str = "laptop", created: float = 100.0, models: list[str] | None = None,
        active: bool = True, expires: float | None = None, prefix: str = "") -> KeyRecord:
    return KeyRecord(id=key_id, owner=owner, name=name, hash=f"hash-{key_id}", prefix=prefix or f"sk-{key_id}",
                     created=created, expires=expires, active=active, models=models or [])


def event(rid: str, ts: float, user: str = "u", key_id: str = "k", model: str = "m", p: int = 1, c: int = 2,
          cost: float = 0.5, estimated: bool = False) -> UsageEvent:
    return UsageEvent(ts=ts, request_id=rid, key_id=key_id, user=user, model=model, prompt_tokens=p,
                      completion_tokens=c, cost=cost, status=200, latency_ms=1.0, streamed=False,
                      estimated=estimated, endpoint="/v1/chat/completions")


def token(token_id: str, created: float, expires: float | None = None) -> AdminToken:
    return AdminToken(id=token_id, name=f"name-{token_id}", hash=f"hash-{token_id}", prefix=f"lgwa-{token_id}",
                      created_by="root", created=created, expires=expires)


def audit(ts: float, action: str = "key.update", actor: str = "ann", target: str = "key_1", via: str = "api",
          details: dict | None = None) -> AuditEntry:
    return AuditEntry(ts=ts, actor=actor, via=via, source="127.0.0.1", action=action, target=target,
                      details=details or {})


# People


def people(store: Store) -> None:
    """Seven users: roles from the IdP and from an admin, one disabled, searchable names and emails."""
    for name, display, email, idp_admin in [
        ("alice", "Alice Smith", "alice@uni.example", True),
        ("bob", "Bob Jones", "bj@lab.example", False),
        ("carol", "Carol 100% Sure", "carol@uni.example", False),
        ("dave", "Dave", "dave_x@lab.example", False),
        ("erin", "Erin SMITH", "erin@uni.example", False),
        ("frank", "Frank", "frank@lab.example", False),
        ("grace", "Grace", "davexy@uni.example", False),
    ]:
        store.upsert_user(UserRecord(name, display, email, is_admin=idp_admin, created=1.0))
    store.update_user("bob", {"admin_granted": True})
    store.update_user("erin", {"disabled": True})


def test_find_users_pages_in_username_order(store: Store) -> None:
    people(store)
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"]
    for offset in range(9):
        for limit in (1, 3, 50):
            found, total = store.find_users(offset=offset, limit=limit)
            assert [u.username for u in found] == names[offset:offset + limit]
            assert total == 7
    assert store.find_users(limit=0) == ([], 7)


def test_find_users_filters(store: Store) -> None:
    people(store)

    def names(**filters: object) -> tuple[list[str], int]:
        found, total = store.find_users(**filters)  # type: ignore[arg-type]
        return [u.username for u in found], total

    assert names(search="SMITH") == (["alice", "erin"], 2)  # display name, any case
    assert names(search="LAB.EX") == (["bob", "dave", "frank"], 3)  # email
    assert names(search="aro") == (["carol"], 1)  # username
    assert names(search="100%") == (["carol"], 1)
    assert names(search="%") == (["carol"], 1)  # '%' is a character, not a wildcard
    assert names(search="dave_x") == (["dave"], 1)  # '_' too: "davexy" does not match
    assert names(search="_") == (["dave"], 1)
    assert names(search="nobody") == ([], 0)
    # The effective role: from the IdP (alice) or granted (bob).
    assert names(admin=True) == (["alice", "bob"], 2)
    assert names(admin=False) == (["carol", "dave", "erin", "frank", "grace"], 5)
    assert names(disabled=True) == (["erin"], 1)
    assert names(disabled=False)[1] == 6
    assert names(search="smith", admin=False) == (["erin"], 1)
    assert names(search="smith", disabled=False) == (["alice"], 1)
    assert names(search="uni", admin=False, disabled=False, offset=1, limit=1) == (["grace"], 2)


def test_update_user_changes_one_user_atomically(store: Store) -> None:
    store.upsert_user(UserRecord("ann", "Ann", "ann@x", created=5.0, last_login=6.0, agreement_version="v1"))
    store.upsert_user(UserRecord("bo", created=7.0))
    changed = store.update_user("ann", {"admin_granted": True, "disabled": True, "limits": {"tokens_per_day": 9.0}})
    expected = UserRecord("ann", "Ann", "ann@x", created=5.0, last_login=6.0, agreement_version="v1",
                          limits={"tokens_per_day": 9.0}, admin_granted=True, disabled=True)
    assert changed == expected and store.get_user("ann") == expected and expected.admin
    assert store.get_user("bo") == UserRecord("bo", created=7.0)
    again = store.update_user("ann", {"disabled": False})
    assert again is not None and not again.disabled and again.admin_granted and again.limits == {"tokens_per_day": 9.0}


def test_update_user_never_creates_a_user(store: Store) -> None:
    assert store.update_user("ghost", {"disabled": True}) is None
    assert store.get_user("ghost") is None
    assert store.find_users() == ([], 0)


@pytest.mark.parametrize("changes", [{"is_admin": True}, {"disabled": True, "email": "x@y"}, {}])
def test_update_user_refuses_other_fields_and_writes_nothing(store: Store, changes: dict) -> None:
    before = store.upsert_user(UserRecord("ann", "Ann", created=5.0))
    with pytest.raises(ValueError):
        store.update_user("ann", changes)
    assert store.get_user("ann") == before


def test_login_refreshes_the_idp_role_and_keeps_granted_role_and_disabled(store: Store) -> None:
    store.upsert_user(UserRecord("ann", "Ann", is_admin=True, created=5.0))
    store.update_user("ann", {"admin_granted": True, "disabled": True})
    again = store.upsert_user(UserRecord("ann", "Ann B", is_admin=False, last_login=9.0))
    assert (again.is_admin, again.admin_granted, again.disabled, again.admin) == (False, True, True, True)
    assert store.get_user("ann") == again
    store.update_user("ann", {"admin_granted": False})
    assert not store.upsert_user(UserRecord("ann", "Ann B")).admin


def test_a_new_user_is_stored_as_given(store: Store) -> None:
    given = UserRecord("cy", "Cy", "cy@x", created=3.0, admin_granted=True, disabled=True)
    assert store.upsert_user(given) == given
    assert store.get_user("cy") == given


# Keys


def keyring(store: Store) -> list[KeyRecord]:
    """Keys of two owners: active, revoked, expired and expiring later; some limited to models."""
    records = [  # written out of order: the ties at created=300 too
        key("key_a1", "ann", "Laptop", created=100.0),
        key("key_b3", "bob", "server", created=300.0, expires=NOW, prefix="sk-lgw-XyZ123"),
        key("key_b1", "bob", "notebook", created=200.0, models=["qwen"], active=False),
        key("key_b2", "bob", "100%_done", created=300.0, expires=NOW - 1),
        key("key_a3", "ann", "old laptop", created=50.0, expires=NOW + 1, models=["mistral"]),
        key("key_a2", "ann", "CI runner", created=300.0, models=["llama", "qwen"]),
    ]
    for record in records:
        store.insert_key(record)
    return records


def test_find_keys_pages_newest_first_ties_by_id(store: Store) -> None:
    keyring(store)
    order = ["key_a2", "key_b2", "key_b3", "key_b1", "key_a1", "key_a3"]
    for offset in range(8):
        for limit in (1, 2, 50):
            found, total = store.find_keys(now=NOW, offset=offset, limit=limit)
            assert [k.id for k in found] == order[offset:offset + limit]
            assert total == 6


def test_find_keys_filters_alone_and_together(store: Store) -> None:
    keyring(store)

    def ids(**filters: object) -> tuple[list[str], int]:
        found, total = store.find_keys(now=NOW, **filters)  # type: ignore[arg-type]
        return [k.id for k in found], total

    assert ids(owner="ann") == (["key_a2", "key_a1", "key_a3"], 3)
    assert ids(owner="nobody") == ([], 0)
    # A key may use a model it lists, or any model when it lists none.
    assert ids(model="qwen") == (["key_a2", "key_b2", "key_b3", "key_b1", "key_a1"], 5)
    assert ids(model="mistral") == (["key_b2", "key_b3", "key_a1", "key_a3"], 4)
    assert ids(model="llam") == (["key_b2", "key_b3", "key_a1"], 3)  # whole model ids only
    # Status as KeyRecord.status(now) tells it: expiring exactly now is expired.
    assert ids(status="active") == (["key_a2", "key_a1", "key_a3"], 3)
    assert ids(status="expired") == (["key_b2", "key_b3"], 2)
    assert ids(status="revoked") == (["key_b1"], 1)
    assert ids(search="LAPTOP") == (["key_a1", "key_a3"], 2)  # name, any case
    assert ids(search="_b1") == (["key_b1"], 1)  # id
    assert ids(search="xyz1") == (["key_b3"], 1)  # display prefix
    assert ids(search="0%_") == (["key_b2"], 1)
    assert ids(search="%") == (["key_b2"], 1)  # '%' is a character, not a wildcard
    assert ids(search="p_o") == ([], 0)  # '_' too: "laptop" does not match
    assert ids(owner="ann", model="mistral", status="active") == (["key_a1", "key_a3"], 2)
    assert ids(owner="bob", search="o", status="expired") == (["key_b2"], 1)
    assert ids(owner="ann", status="active", offset=1, limit=1) == (["key_a1"], 3)
    with pytest.raises(StoreError):
        store.find_keys(status="lost")


def test_find_keys_status_follows_now(store: Store) -> None:
    keyring(store)
    assert store.find_keys(status="expired", now=0.0)[1] == 0
    assert store.find_keys(status="active", now=0.0)[1] == 5
    assert [k.id for k in store.find_keys(status="active", now=NOW + 1)[0]] == ["key_a2", "key_a1"]


def test_get_and_update_key(store: Store) -> None:
    records = keyring(store)
    assert store.get_key("key_a1") == records[0]
    assert store.get_key("key_zz") is None
    changed = store.update_key("key_a1", {"name": "Desk", "models": ["qwen"], "expires": NOW, "limits": {"rpm": 2.0}})
    expected = key("key_a1", "ann", "Desk", created=100.0, models=["qwen"], expires=NOW)
    expected.limits = {"rpm": 2.0}
    assert changed == expected and store.get_key("key_a1") == expected
    cleared = store.update_key("key_a1", {"expires": None, "models": []})
    assert cleared is not None and cleared.expires is None and cleared.models == [] and cleared.name == "Desk"
    assert store.get_key("key_a2") == records[5]


def test_update_key_never_creates_a_key(store: Store) -> None:
    assert store.update_key("key_zz", {"name": "x"}) is None
    assert store.get_key("key_zz") is None
    assert store.find_keys() == ([], 0)


@pytest.mark.parametrize("changes", [{"active": False}, {"name": "x", "owner": "eve"}, {"owner_disabled": True}, {}])
def test_update_key_refuses_other_fields_and_writes_nothing(store: Store, changes: dict) -> None:
    records = keyring(store)
    with pytest.raises(ValueError):
        store.update_key("key_a1", changes)
    assert store.get_key("key_a1") == records[0]


def test_owner_disabled_is_never_stored(store: Store) -> None:
    record = key("key_d")
    record.owner_disabled = True
    store.insert_key(record)
    assert store.get_key("key_d").owner_disabled is False
    assert store.key_by_hash("hash-key_d").owner_disabled is False
    assert store.find_keys()[0][0].owner_disabled is False
    assert store.update_key("key_d", {"name": "n"}).owner_disabled is False


# The model catalog


def test_model_catalog_lifecycle(store: Store) -> None:
    qwen = ModelRecord("qwen", {"upstreams": [{"url": "http://a:1/v1", "weight": 2}], "kind": "chat"}, 10.0, 10.0)
    llama = ModelRecord("llama", {"upstreams": [{"url": "http://b:1/v1"}], "prompt_cost": 0.5}, 20.0, 20.0)
    assert store.list_models() == [] and store.get_model("qwen") is None
    assert store.insert_model(qwen) and store.insert_model(llama)
    assert store.list_models() == [llama, qwen]
    assert not store.insert_model(ModelRecord("qwen", {"kind": "embedding"}, 30.0, 30.0))
    assert store.get_model("qwen") == qwen
    changed = ModelRecord("qwen", {"upstreams": [{"url": "http://c:1/v1"}]}, created=99.0, updated=40.0)
    assert store.update_model(changed)
    assert store.get_model("qwen") == ModelRecord("qwen", {"upstreams": [{"url": "http://c:1/v1"}]}, 10.0, 40.0)
    assert not store.update_model(ModelRecord("ghost", {}, 1.0, 1.0))
    assert store.get_model("ghost") is None
    assert store.delete_model("qwen")
    assert not store.delete_model("qwen")
    assert store.list_models() == [llama]


# Admin tokens


def test_admin_token_lifecycle(store: Store) -> None:
    tokens = [token("t1", 100.0, expires=NOW), token("t3", 300.0), token("t2", 300.0)]
    for t in tokens:
        store.insert_admin_token(t)
    assert store.admin_token_by_hash("hash-t1") == tokens[0]
    assert store.admin_token_by_hash("hash-none") is None
    assert [t.id for t in store.list_admin_tokens()] == ["t2", "t3", "t1"]
    revoked = store.revoke_admin_token("t3")
    assert revoked is not None and not revoked.active and not revoked.usable(0.0)
    assert not store.admin_token_by_hash("hash-t3").active
    assert store.admin_token_by_hash("hash-t2").active
    assert store.revoke_admin_token("t9") is None
    store.touch_admin_token("t1", 500.0)
    store.touch_admin_token("t1", 400.0)  # touches from replicas may land out of order
    store.touch_admin_token("t9", 500.0)
    assert store.admin_token_by_hash("hash-t1").last_used == 500.0
    assert store.admin_token_by_hash("hash-t2").last_used is None
    assert len(store.list_admin_tokens()) == 3
    with pytest.raises(StoreError):
        store.insert_admin_token(AdminToken("t4", "n", "hash-t1", "p", "root", 1.0, None))


# Audit log


def audit_id_order(entry_id: str) -> tuple[int, str]:
    """Ids increase as numbers (SQLite) or as fixed-width strings (MongoDB): shorter first, then by text."""
    return len(entry_id), entry_id


def test_audit_ids_increase_and_entries_round_trip(store: Store) -> None:
    entries = [store.insert_audit(audit(float(ts), details={"n": ts, "changes": {"name": "x"}})) for ts in range(12)]
    ids = [e.id for e in entries]
    assert all(ids) and sorted(ids, key=audit_id_order) == ids and len(set(ids)) == 12
    found, total = store.find_audit(limit=100)
    assert total == 12 and found == entries[::-1]


def test_find_audit_filters_and_pages(store: Store) -> None:
    entries = [
        store.insert_audit(audit(10.0, "key.create", "ann", "key_1", "api")),
        store.insert_audit(audit(20.0, "key.update", "bob", "key_1", "ui")),
        store.insert_audit(audit(20.0, "keyring.reset", "ann", "key_2", "cli")),
        store.insert_audit(audit(30.0, "user.update", "ann", "bob", "ui")),
        store.insert_audit(audit(40.0, "user.key.odd", "bob", "ann", "portal")),
        store.insert_audit(audit(50.0, "a_b.x", "cy", "t", "api")),
        store.insert_audit(audit(50.0, "axb.x", "cy", "t", "api")),
        store.insert_audit(audit(60.0, "a*.x", "cy", "t", "api")),
    ]

    def found(**filters: object) -> tuple[list[int], int]:
        page, total = store.find_audit(**filters)  # type: ignore[arg-type]
        return [entries.index(e) for e in page], total

    # Newest first; entries of the same second, the later written first.
    assert found() == ([7, 6, 5, 4, 3, 2, 1, 0], 8)
    assert found(action="key.") == ([1, 0], 2)
    assert found(action="key") == ([2, 1, 0], 3)
    assert found(action="key.update") == ([1], 1)
    assert found(action="KEY.") == ([], 0)  # actions are matched as written
    assert found(action="a_b") == ([5], 1)  # '_' and '*' are characters, not wildcards
    assert found(action="a*") == ([7], 1)
    assert found(actor="ann") == ([3, 2, 0], 3)
    assert found(target="key_1") == ([1, 0], 2)
    assert found(via="ui") == ([3, 1], 2)
    assert found(since=20.0, until=40.0) == ([3, 2, 1], 3)
    assert found(until=20.0) == ([0], 1)
    assert found(actor="ann", action="key", via="cli") == ([2], 1)
    assert found(offset=2, limit=3) == ([5, 4, 3], 8)
    assert found(actor="cy", offset=2, limit=5) == ([5], 3)


# Usage reports


def spread_events(prefix: str, n: int, days: int = 6) -> list[UsageEvent]:
    """`n` events over `days` days from BASE: four people, five keys, three models; costs in quarters
    so that sums are exact whatever order a backend adds them in."""
    return [
        event(f"{prefix}{i}", ts=BASE + (i * 7919.0) % (days * DAY), user=f"u{i % 4}", key_id=f"k{i % 5}",
              model=f"m{i % 3}", p=i % 11 + 1, c=i % 7, cost=0.25 * (i % 6), estimated=i % 4 == 0)
        for i in range(n)
    ]


def totals_of(rows: list[UsageRow]) -> dict:
    return {name: sum(r[name] for r in rows)  # type: ignore[literal-required]
            for name in ("requests", "prompt_tokens", "completion_tokens", "cost", "estimated")}


FILTERS = [{}, {"user": "u1"}, {"key_id": "k2"}, {"model": "m0"}, {"user": "u2", "model": "m1"},
           {"user": "u3", "key_id": "k3"}]


@pytest.mark.parametrize("group_by", GROUPS)
def test_usage_report_equals_the_raw_events_wherever_live_begins(store: Store, group_by: str) -> None:
    store.insert_usage(spread_events("e", 300))
    store.rollup_usage("day", BASE, BASE + 6 * DAY)
    until = BASE + 6 * DAY
    # Rollup spans of most and of few of the stored days (SQLite reads them in different orders).
    for since, middle in ((BASE + DAY, BASE + 3 * DAY), (BASE + 4 * DAY, BASE + 5 * DAY)):
        for filters in FILTERS:
            truth = store.usage_summary(group_by, since, until, **filters)
            assert truth, filters
            for live_since in (BASE, since, middle, until, BASE + 9 * DAY):
                rows, count, totals = store.usage_report(group_by, since, live_since, until, **filters)
                assert rows == truth, (since, filters, live_since)
                assert count == len(truth) and totals == totals_of(truth)
    everything = store.usage_summary(group_by, BASE + DAY)
    assert store.usage_report(group_by, BASE + DAY, BASE + 3 * DAY) == (everything, len(everything),
                                                                        totals_of(everything))


def test_days_before_live_since_come_from_the_rollups(store: Store) -> None:
    store.insert_usage(spread_events("e", 120))
    store.rollup_usage("day", BASE, BASE + 6 * DAY)
    until = BASE + 6 * DAY
    before = {group_by: store.usage_summary(group_by, BASE, until) for group_by in GROUPS}
    # After the rollup, an event arrives in an old day: that day's rollups do not hold it.
    store.insert_usage([event("late", ts=BASE + DAY + 5, user="newcomer", key_id="k_new", p=1000, cost=8.0)])
    for group_by in GROUPS:
        with_late = store.usage_summary(group_by, BASE, until)
        assert with_late != before[group_by]
        # Live from the start of its day: it counts.
        assert store.usage_report(group_by, BASE, BASE + DAY, until)[0] == with_late
        # Live from the next day: its day comes from the rollups, without it.
        rows, count, totals = store.usage_report(group_by, BASE, BASE + 2 * DAY, until)
        assert rows == before[group_by] and count == len(rows) and totals == totals_of(before[group_by])
    assert store.usage_report("model", BASE, until, until, key_id="k_new") == ([], 0, totals_of([]))
    # Rolling the day up again takes it in, for reports with a key and without.
    store.rollup_usage("day", BASE + DAY, BASE + 2 * DAY)
    for group_by in GROUPS:
        assert store.usage_report(group_by, BASE, until, until)[0] == store.usage_summary(group_by, BASE, until)
    assert store.usage_report("model", BASE, until, until, key_id="k_new")[0] == [
        {"group": "m", "requests": 1, "prompt_tokens": 1000, "completion_tokens": 2, "cost": 8.0, "estimated": 0}
    ]


def test_hour_rollups_do_not_feed_reports(store: Store) -> None:
    store.insert_usage(spread_events("e", 40))
    store.rollup_usage("hour", BASE, BASE + 6 * DAY)
    assert store.usage_report("user", BASE, BASE + 6 * DAY, BASE + 6 * DAY) == ([], 0, totals_of([]))
    store.rollup_usage("day", BASE, BASE + 6 * DAY)
    truth = store.usage_summary("user", BASE, BASE + 6 * DAY)
    assert store.usage_report("user", BASE, BASE + 6 * DAY, BASE + 6 * DAY)[0] == truth


def test_init_derives_the_per_user_rollups_of_a_store_written_before_them(backend: Backend) -> None:
    store = backend.store
    # Forty days, every other day: more than one step of the backfill, with gaps between days.
    store.insert_usage([event(f"e{i}", BASE + 2 * i * DAY + i, user=f"u{i % 3}", model=f"m{i % 2}", p=i)
                        for i in range(40)])
    end = BASE + 80 * DAY
    store.rollup_usage("day", BASE, end)
    truth = {group_by: store.usage_summary(group_by, BASE, end) for group_by in ("user", "model", "day")}
    if backend.name == "sqlite":
        with sqlite3.connect(backend.url[len("sqlite:///"):]) as conn:
            conn.execute("DELETE FROM usage_daily_users")
    else:
        store.db.usage_daily_users.delete_many({})  # type: ignore[attr-defined]
    assert store.usage_report("user", BASE, end, end) == ([], 0, totals_of([]))  # as an older store has them
    store.init()
    for group_by, rows in truth.items():
        assert store.usage_report(group_by, BASE, end, end)[0] == rows
    assert len(truth["day"]) == 40


def delete_rollups(backend: Backend, table: str, day: float | None = None) -> None:
    """Drop rows of a daily rollup table (all of them, or one day's) behind the store's back."""
    if backend.name == "sqlite":
        with sqlite3.connect(backend.url[len("sqlite:///"):]) as conn:
            conn.execute(f"DELETE FROM {table} WHERE ? IS NULL OR start = ?", (day, day))
    else:
        backend.store.db[table].delete_many({} if day is None else {"start": day})  # type: ignore[attr-defined]


def test_reports_by_day_and_model_read_the_per_model_rollups(backend: Backend) -> None:
    store = backend.store
    store.insert_usage(spread_events("e", 300))
    until = BASE + 6 * DAY
    store.rollup_usage("day", BASE, until)
    truth = {(group_by, model): store.usage_summary(group_by, BASE, until, model=model)
             for group_by in ("day", "model", "user") for model in (None, "m0")}
    for live_since in (BASE, BASE + 3 * DAY, until):
        for (group_by, model), rows in truth.items():
            assert store.usage_report(group_by, BASE, live_since, until, model=model)[0] == rows
    # With one rolled-up day gone from the per-user rows, reports by person lose it; reports by day
    # or by model without a person or key still hold it, for they read the per-model rows.
    delete_rollups(backend, "usage_daily_users", BASE + DAY)
    for (group_by, model), rows in truth.items():
        report = store.usage_report(group_by, BASE, until, until, model=model)[0]
        assert (report == rows) is (group_by != "user"), (group_by, model)
    # With a person, a report by day or model reads the per-user rows, which lack the day.
    lacking = store.usage_report("day", BASE, until, until, user="u1")[0]
    assert [r["group"] for r in lacking] == [r["group"] for r in store.usage_summary("day", BASE, until, user="u1")
                                             if r["group"] != "1970-07-21"]
    # A day rolled up again with its raw events gone (retention) leaves no per-model rows behind.
    store.delete_usage_before(BASE + 2 * DAY)
    store.rollup_usage("day", BASE, BASE + 2 * DAY)
    assert store.usage_report("day", BASE, until, until)[0] == truth["day", None][2:]
    assert store.usage_report("model", BASE, until, until)[0] == store.usage_summary("model", BASE, until)


def test_init_derives_the_per_model_rollups_of_a_store_written_before_them(backend: Backend) -> None:
    store = backend.store
    # Forty days, every other day: more than one step of the backfill, with gaps between days.
    store.insert_usage([event(f"e{i}", BASE + 2 * i * DAY + i, user=f"u{i % 3}", model=f"m{i % 2}", p=i)
                        for i in range(40)])
    end = BASE + 80 * DAY
    store.rollup_usage("day", BASE, end)
    truth = {(group_by, model): store.usage_summary(group_by, BASE, end, model=model)
             for group_by in ("model", "day") for model in (None, "m1")}
    delete_rollups(backend, "usage_daily_models")
    assert store.usage_report("day", BASE, end, end) == ([], 0, totals_of([]))  # as an older store has them
    store.init()
    for (group_by, model), rows in truth.items():
        assert store.usage_report(group_by, BASE, end, end, model=model)[0] == rows
    assert len(truth["day", None]) == 40 and len(truth["day", "m1"]) == 20


def ranked(rows: list[UsageRow], order: str) -> list[UsageRow]:
    def measure(r: UsageRow) -> float:
        return r["prompt_tokens"] + r["completion_tokens"] if order == "tokens" else r[order]  # type: ignore[literal-required]

    by_group = sorted(rows, key=lambda r: r["group"])
    return by_group if order == "group" else sorted(by_group, key=measure, reverse=True)


def tied_events() -> list[UsageEvent]:
    """Users whose costs, requests and tokens tie in places, spread over rollup and live days."""
    spec = [  # user, day, requests, prompt, completion, cost each
        ("ann", 0, 2, 5, 5, 1.0), ("ann", 3, 1, 10, 0, 2.0),
        ("bob", 1, 3, 1, 1, 1.0), ("bob", 4, 1, 20, 0, 2.0),
        ("cy", 4, 4, 2, 2, 0.75),
        ("dee", 0, 1, 30, 0, 3.0),
        ("eve", 2, 4, 1, 1, 0.5), ("eve", 5, 1, 1, 0, 0.25),
        ("fay", 5, 3, 5, 0, 1.0),
        ("gus", 1, 2, 3, 3, 1.5),
    ]
    return [
        event(f"{user}-{day}-{i}", ts=BASE + day * DAY + 60 * i, user=user, p=p, c=c, cost=cost)
        for user, day, n, p, c, cost in spec for i in range(n)
    ]


@pytest.mark.parametrize("order", ["group", "cost", "requests", "tokens"])
def test_usage_report_orders_and_pages(store: Store, order: str) -> None:
    store.insert_usage(tied_events())
    store.rollup_usage("day", BASE, BASE + 6 * DAY)
    until = BASE + 6 * DAY
    for group_by in ("user", "day"):
        full = ranked(store.usage_summary(group_by, BASE, until), order)
        assert len(full) >= 6
        for live_since in (BASE, BASE + 3 * DAY, BASE + 5 * DAY, until):
            assert store.usage_report(group_by, BASE, live_since, until, order=order)[0] == full
            for offset in range(len(full) + 2):
                for limit in (1, 2, 3, 50):
                    rows, count, totals = store.usage_report(group_by, BASE, live_since, until, order=order,
                                                             offset=offset, limit=limit)
                    assert rows == full[offset:offset + limit], (group_by, live_since, offset, limit)
                    assert count == len(full) and totals == totals_of(full)
    # The sums, worked out by hand, with their ties broken by name.
    ties = [r["group"] for r in store.usage_report("user", BASE, BASE + 3 * DAY, until, order=order)[0]]
    assert ties == {
        "group": ["ann", "bob", "cy", "dee", "eve", "fay", "gus"],
        "cost": ["bob", "ann", "cy", "dee", "fay", "gus", "eve"],  # 5, 4, 3, 3, 3, 3, 2.25
        "requests": ["eve", "bob", "cy", "ann", "fay", "gus", "dee"],  # 5, 4, 4, 3, 3, 2, 1
        "tokens": ["ann", "dee", "bob", "cy", "fay", "gus", "eve"],  # 30, 30, 26, 16, 15, 12, 9
    }[order]


def test_usage_report_orders_keys_by_cost(store: Store) -> None:
    store.insert_usage([
        event("1", BASE, key_id="kb", cost=1.0), event("2", BASE + DAY, key_id="ka", cost=1.0),
        event("3", BASE + 2 * DAY, key_id="kc", cost=0.5), event("4", BASE + 2 * DAY, key_id="kb", cost=0.75),
    ])
    store.rollup_usage("day", BASE, BASE + 3 * DAY)
    rows, count, totals = store.usage_report("key", BASE, BASE + 2 * DAY, BASE + 3 * DAY, order="cost", limit=2)
    assert [(r["group"], r["cost"]) for r in rows] == [("kb", 1.75), ("ka", 1.0)]
    assert count == 3 and totals["cost"] == 3.25 and totals["requests"] == 4


def test_usage_report_empty_pages_and_bad_arguments(store: Store) -> None:
    store.insert_usage(spread_events("e", 50))
    store.rollup_usage("day", BASE, BASE + 6 * DAY)
    truth = store.usage_summary("model", BASE, BASE + 6 * DAY)
    rows, count, totals = store.usage_report("model", BASE, BASE + 2 * DAY, BASE + 6 * DAY, offset=10, limit=5)
    assert rows == [] and count == 3 and totals == totals_of(truth) and totals["requests"] == 50
    assert store.usage_report("model", BASE, BASE + 2 * DAY, BASE + 6 * DAY, limit=0)[1:] == (3, totals_of(truth))
    assert store.usage_report("model", BASE + 7 * DAY, BASE + 8 * DAY, BASE + 9 * DAY) == ([], 0, totals_of([]))
    with pytest.raises(StoreError):
        store.usage_report("colour", BASE, BASE)
    with pytest.raises(StoreError):
        store.usage_report("user", BASE, BASE, order="loudest")


# Raw events


def test_find_usage_pages_newest_first_with_filters(store: Store) -> None:
    store.insert_usage([
        event("r5", 50.0, user="ann", key_id="k1"), event("r4", 40.0, user="ann", key_id="k2"),
        event("r3b", 30.0, user="ann", key_id="k1"), event("r3a", 30.0, user="bob", key_id="k1"),
        event("r2", 20.0, user="bob", key_id="k3"), event("r1", 10.0, user="ann", key_id="k1"),
    ])

    def found(**filters: object) -> tuple[list[str], int]:
        page, total = store.find_usage(**filters)  # type: ignore[arg-type]
        return [e.request_id for e in page], total

    assert found() == (["r5", "r4", "r3a", "r3b", "r2", "r1"], 6)
    assert found(user="ann") == (["r5", "r4", "r3b", "r1"], 4)
    assert found(key_id="k1") == (["r5", "r3a", "r3b", "r1"], 4)
    assert found(user="ann", key_id="k1", since=20.0) == (["r5", "r3b"], 2)
    assert found(since=20.0, until=50.0) == (["r4", "r3a", "r3b", "r2"], 4)
    assert found(offset=2, limit=2) == (["r3a", "r3b"], 6)
    assert found(user="ann", offset=3, limit=5) == (["r1"], 4)
    assert found(user="cy") == ([], 0)
    page, _ = store.find_usage(user="ann", limit=1)
    assert page == [event("r5", 50.0, user="ann", key_id="k1")]


# Backend specifics


def test_sqlite_users_of_an_older_schema_gain_role_and_disabled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE users (username TEXT PRIMARY KEY, display_name TEXT NOT NULL DEFAULT '',
            email TEXT NOT NULL DEFAULT '', is_admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
            last_login REAL, agreement_version TEXT, limits TEXT NOT NULL DEFAULT '{}');
        INSERT INTO users (username, created, is_admin) VALUES ('old', 1.0, 1);
    """)
    old.close()
    store = open_store(f"sqlite:///{path}")
    store.init()
    assert store.get_user("old") == UserRecord("old", is_admin=True, created=1.0)
    assert store.update_user("old", {"disabled": True}).disabled
    assert store.find_users(disabled=True)[1] == 1
    store.close()


def test_mongo_users_written_before_roles_read_as_not_granted_nor_disabled(mongo: MongoStore) -> None:
    mongo.db.users.insert_one({"_id": "old", "display_name": "", "email": "", "is_admin": False, "created": 1.0,
                               "last_login": None, "agreement_version": None, "limits": {}})
    assert mongo.get_user("old") == UserRecord("old", created=1.0)
    assert [u.username for u in mongo.find_users(admin=False, disabled=False)[0]] == ["old"]
    assert mongo.find_users(disabled=True) == ([], 0)
    assert mongo.upsert_user(UserRecord("old", "Old", is_admin=True)).admin_granted is False


def test_mongo_keeps_no_owner_state_in_key_documents(mongo: MongoStore) -> None:
    record = key("key_d")
    record.owner_disabled = True
    mongo.insert_key(record)
    assert "owner_disabled" not in mongo.db.api_keys.find_one({"_id": "key_d"})
    mongo.db.api_keys.update_one({"_id": "key_d"}, {"$set": {"owner_disabled": True}})
    assert mongo.get_key("key_d").owner_disabled is False
