"""Admin changes on one replica reach the others without a restart: models at once through Redis
(or within `admin.catalog_refresh_seconds` without it), a disabled person at once through Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from .admin_client import BOOTSTRAP, AdminClient
from .conftest import GatewayProcess, MockUpstream, RedisServer, model_toml, wait_for

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
    admin = AdminClient(a, token=BOOTSTRAP)
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
    AdminClient(a, token=BOOTSTRAP).ok("POST", "/models", {"id": "new-model", "upstreams": [upstream.url]}, 201)
    assert served(a, key) == ["config-model", "new-model"]
    wait_for(lambda: served(b, key) == ["config-model", "new-model"], 5, what="model after one refresh")
    with pytest.raises(openai.NotFoundError):
        b.client(key).chat.completions.create(model="other-model", messages=HELLO)
