"""Admin changes on one replica reach the others without a restart: models at once through Redis
(or within `admin.catalog_refresh_seconds` without it), a disabled person at once through Redis,
and an admin who lost the role has no working token left on any replica."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.admin_client import BOOTSTRAP, AdminClient, first_admin
from tests.conftest import GatewayProcess, MockUpstream, RedisServer, model_toml, wait_for

HELLO = [{"role": "user", "content": "Hello"}]


def two_replicas(start_gateway: Callable[..., GatewayProcess], upstream: MockUpstream, tmp_path: Path,
                 extra: str) -> list[GatewayProcess]:
    store = tmp_path / "shared.db"
    return [start_gateway(model_toml("config-model", [upstream.url]), extra, env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP},
                          store_path=store) for _ in range(2)]


def served(gw: GatewayProcess, key: str) -> list[str]:
    return [m.id for m in gw.client(key).models.list()]


def test_with_redis_model_and_person_changes_reach_the_other_replica_at_once(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream],
        redis_server: RedisServer, tmp_path: Path) -> None:
    upstream = start_mock()
    extra = (f'[redis]\nurl = "{redis_server.url}"\n[keys]\ncache_ttl_seconds = 300\n'
             "[admin]\ncatalog_refresh_seconds = 300\n")
    a, b = two_replicas(start_gateway, upstream, tmp_path, extra)
    key = a.create_key("olga")
    assert served(b, key) == ["config-model"]
    admin = first_admin(a)
    admin.ok("POST", "/models", {"id": "new-model", "upstreams": [upstream.url]}, 201)
    started = time.monotonic()
    wait_for(lambda: served(b, key) == ["config-model", "new-model"], 2, what="model on the other replica")
    assert time.monotonic() - started < 2
    assert b.client(key).chat.completions.create(model="new-model", messages=HELLO).usage
    assert b.client(key).chat.completions.create(model="config-model", messages=HELLO).usage
    admin.ok("PATCH", "/users/olga", {"disabled": True})

    def refused() -> bool:
        try:
            b.client(key).models.list()
        except openai.AuthenticationError:
            return True
        return False

    wait_for(refused, 1, what="disabled person refused on the other replica")
    admin.ok("DELETE", "/models/new-model")
    admin.ok("PATCH", "/users/olga", {"disabled": False})
    wait_for(lambda: not refused() and served(b, key) == ["config-model"], 2, what="both changes undone on b")


def test_without_redis_the_catalog_refreshes_within_its_interval(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream],
        tmp_path: Path) -> None:
    upstream = start_mock()
    a, b = two_replicas(start_gateway, upstream, tmp_path, "[admin]\ncatalog_refresh_seconds = 1\n")
    key = a.create_key("pat")
    first_admin(a).ok("POST", "/models", {"id": "new-model", "upstreams": [upstream.url]}, 201)
    assert served(a, key) == ["config-model", "new-model"]
    wait_for(lambda: served(b, key) == ["config-model", "new-model"], 5, what="model after one refresh")
    with pytest.raises(openai.NotFoundError):
        b.client(key).chat.completions.create(model="other-model", messages=HELLO)


def test_a_removed_admins_token_is_refused_on_the_other_replica_within_a_second(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream],
        redis_server: RedisServer, tmp_path: Path) -> None:
    upstream = start_mock()
    extra = f'[redis]\nurl = "{redis_server.url}"\n[keys]\ncache_ttl_seconds = 300\n'
    a, b = two_replicas(start_gateway, upstream, tmp_path, extra)
    root = first_admin(a)
    ops = AdminClient(b, token=root.ok("POST", "/tokens", {"name": "ops-by-root"}, 201)["token"])
    # olga becomes an admin (granted), makes a token, and loses the role on replica a
    a.cli("admin", "grant", "olga")
    olga_token = a.cli("admin", "token", "create", "--name", "olga-ci", "--owner", "olga").stdout.strip()
    on_b = AdminClient(b, token=olga_token)
    assert on_b.ok("GET", "/me")["person"] == "olga"
    assert ops.ok("GET", "/users/olga")["admin"] is True
    root.ok("PATCH", "/users/olga", {"admin": False})
    started = time.monotonic()
    wait_for(lambda: on_b.call("GET", "/users")[0] == 401, 1, what="removed admin's token refused on b")
    assert time.monotonic() - started < 1
    code, answer = on_b.call("GET", "/users")
    assert "not an administrator any more" in answer["error"]["message"]
    root.ok("PATCH", "/users/olga", {"admin": True, "disabled": True})
    assert on_b.call("GET", "/me")[0] == 401, "a disabled admin's token is refused too"
    root.ok("PATCH", "/users/olga", {"disabled": False})
    assert on_b.ok("GET", "/me")["person"] == "olga"


def test_a_change_whose_announcement_was_lost_reaches_every_replica_within_the_reconcile_interval(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream],
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Changes written straight into the shared store are announced by no one: the reconciliation
    job must find them (the README's bound: `redis.reconcile_interval_seconds`, here 1 s, plus a run)."""
    upstream = start_mock()
    extra = (f'[redis]\nurl = "{redis_server.url}"\nreconcile_interval_seconds = 1\n'
             "[keys]\ncache_ttl_seconds = 300\n")
    a, b = two_replicas(start_gateway, upstream, tmp_path, extra)
    key = a.create_key("pia")
    for gw in (a, b):
        assert gw.client(key).chat.completions.create(model="config-model", messages=HELLO).usage
    bound = 1 + 2  # the interval, a run, and the time the calls below take

    def store(sql: str) -> None:
        with sqlite3.connect(tmp_path / "shared.db", timeout=10) as conn:
            conn.execute(sql)

    def status(gw: GatewayProcess) -> int:
        try:
            gw.client(key).chat.completions.create(model="config-model", messages=HELLO)
        except openai.APIStatusError as err:
            return err.status_code
        return 200

    store("UPDATE api_keys SET models = '[\"another-model\"]' WHERE owner = 'pia'")
    started = time.monotonic()
    wait_for(lambda: status(a) == status(b) == 403, bound, what="narrowed models on both replicas")
    assert time.monotonic() - started < bound
    store("UPDATE api_keys SET models = '[]' WHERE owner = 'pia'")
    wait_for(lambda: status(a) == status(b) == 200, bound, what="widened models on both replicas")
    store("UPDATE users SET disabled = 1 WHERE username = 'pia'")
    started = time.monotonic()
    wait_for(lambda: status(a) == status(b) == 401, bound, what="disabled person on both replicas")
    assert time.monotonic() - started < bound
    assert "reconciliation dropped" in a.log() + b.log()
