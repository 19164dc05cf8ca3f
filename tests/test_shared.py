"""The shared key cache and its invalidation, against a real redis-server that also dies and returns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from llmgateway.auth.keys import make_record
from llmgateway.cluster.shared import CHANNEL, SharedState
from llmgateway.config import RedisConfig
from tests.conftest import RedisServer


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def with_shared(redis_server: RedisServer, scenario: Callable[[SharedState, list], Awaitable[None]]) -> None:
    """Run `scenario` with a started SharedState; messages and reconnects are collected in a list."""

    async def main() -> None:
        seen: list = []

        async def reconnected() -> None:
            seen.append(("reconnected", ""))

        shared = SharedState(RedisConfig(url=redis_server.url, timeout_seconds=0.5),
                             lambda kind, value: seen.append((kind, value)), reconnected,
                             lambda: seen.append(("down", "")))
        await shared.start()
        deadline = time.monotonic() + 10
        while (await shared.client.pubsub_numsub(CHANNEL))[0][1] < 1:
            assert time.monotonic() < deadline, "never subscribed"
            await asyncio.sleep(0.02)
        try:
            await scenario(shared, seen)
        finally:
            await shared.close()

    asyncio.run(main())


def test_a_revoked_key_cannot_be_cached_again_by_a_racing_lookup(redis_server: RedisServer) -> None:
    async def scenario(shared: SharedState, seen: list) -> None:
        _, record = make_record("alice", "laptop")
        await shared.cache_identity(record, {"cost_per_day": 1.0})
        cached = await shared.cached_identity(record.hash)
        assert cached is not None and cached[0] == record and cached[1] == {"cost_per_day": 1.0}
        assert await shared.invalidate("key", record.id, [record.hash])
        await shared.cache_identity(record, {})
        assert await shared.cached_identity(record.hash) is None, "the tombstone kept the stale record out"
        await until(lambda: ("key", record.id) in seen)

    with_shared(redis_server, scenario)


def test_reconciliation_reads_every_shared_entry_and_its_expiry(redis_server: RedisServer) -> None:
    async def scenario(shared: SharedState, seen: list) -> None:
        records = [make_record("bob", f"k{i}")[1] for i in range(3)]
        before = time.time()
        untils = [await shared.cache_identity(record, {"cost_per_day": float(i)}) for i, record in enumerate(records)]
        assert all(u is not None and u >= before + shared.config.key_cache_ttl_seconds - 1 for u in untils)
        entries = await shared.cached_identities()
        assert sorted((h, r.id, limits) for h, r, limits in entries) == sorted(
            (r.hash, r.id, {"cost_per_day": float(i)}) for i, r in enumerate(records))
        assert await shared.invalidate("key", records[0].id, [records[0].hash])
        assert await shared.cache_identity(records[0], {}) is None, "not written over a fresh tombstone"
        assert len(await shared.cached_identities()) == 2

    with_shared(redis_server, scenario)


def test_an_outage_warns_once_falls_back_and_reconnects(redis_server: RedisServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(shared: SharedState, seen: list) -> None:
        _, record = make_record("carol", "k")
        redis_server.kill()
        started = time.monotonic()
        for _ in range(3):
            assert await shared.cached_identity(record.hash) is None
        await shared.cache_identity(record, {})
        assert time.monotonic() - started < 2, "a dead Redis costs at most one timeout, then nothing"
        assert not shared.up
        warnings = [r for r in caplog.records if "Redis is unavailable" in r.getMessage()]
        assert len(warnings) == 1
        redis_server.start()
        await until(lambda: ("reconnected", "") in seen)
        assert shared.up and ("flush", "") in seen, "the process cache is dropped after an outage"
        await shared.cache_identity(record, {})
        assert await shared.cached_identity(record.hash) is not None

    caplog.set_level(logging.WARNING, logger="llmgateway.redis")
    with_shared(redis_server, scenario)
