"""Redis as the replicas' shared hot state: key cache, revocation channel, limit counters.

Redis is optional and never the only copy of anything: the store has the keys and the usage.
When Redis goes away, the first failure marks it down (one warning per outage), traffic goes on
under `redis.on_failure` ("local": each replica enforces the limits alone; "refuse": 503), and a
background task reconnects by itself, after which the reconciliation job repairs what Redis lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import RedisConfig
from ..limits.redis import RedisLimiter
from ..records import KeyRecord

log = logging.getLogger("llmgateway.redis")

CHANNEL = "llmgw:invalidate"
KEY_CACHE = "llmgw:key:"
GONE = "llmgw:gone:"
EPOCH = "llmgw:epoch"
TOMBSTONE_SECONDS = 10
CACHE_UNLESS_GONE = """
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
return 0
"""
SCAN_BATCH = 1000
RETRY_SECONDS = 1.0
LISTEN_WAIT_SECONDS = 1.0


def queue_invalidation(pipe: Any, kind: str, value: str, key_hashes: list[str], hold: int) -> None:
    """Tombstone and delete the shared entries, then tell every replica (on a sync or async pipeline).

    The tombstone stops a replica whose store read raced the change from caching the old record.
    """
    for key_hash in key_hashes:
        pipe.set(GONE + key_hash, "1", ex=hold)
        pipe.delete(KEY_CACHE + key_hash)
    pipe.publish(CHANNEL, f"{kind} {value}")


def announce(config: RedisConfig, kind: str, value: str, key_hashes: list[str]) -> bool:
    """From a process without an event loop (the CLI): drop keys from every replica's cache."""
    client = SyncRedis.from_url(config.url, socket_timeout=config.timeout_seconds,
                                socket_connect_timeout=config.timeout_seconds)
    try:
        pipe = client.pipeline(transaction=False)
        queue_invalidation(pipe, kind, value, key_hashes, TOMBSTONE_SECONDS)
        pipe.execute()
    except RedisError:
        return False
    finally:
        client.close()
    return True


def encode_identity(record: KeyRecord, owner_limits: dict[str, float], until: float) -> str:
    """A shared-cache entry; `until` is when it expires, so that no replica keeps a copy longer."""
    return json.dumps({"key": asdict(record), "owner_limits": owner_limits, "until": until})


def decode_identity(raw: bytes | str) -> tuple[KeyRecord, dict[str, float], float]:
    obj = json.loads(raw)
    return KeyRecord(**obj["key"]), obj["owner_limits"], float(obj.get("until", 0.0))


class SharedState:
    """One replica's connection to Redis, and what it does when Redis is away."""

    def __init__(
        self,
        config: RedisConfig,
        on_message: Callable[[str, str], None],
        on_reconnect: Callable[[], Awaitable[None]],
        on_down: Callable[[], None],
    ) -> None:
        self.config = config
        self.client = Redis.from_url(
            config.url, socket_timeout=config.timeout_seconds, socket_connect_timeout=config.timeout_seconds,
            retry_on_timeout=False,
        )
        self.listener = Redis.from_url(config.url, socket_connect_timeout=config.timeout_seconds,
                                       socket_keepalive=True)
        self.limiter = RedisLimiter(self.client)
        self._cache = self.client.register_script(CACHE_UNLESS_GONE)
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self.on_down = on_down
        self.up = False
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Future | None = None
        self._recovering = False
        self._closing = False
        self.reseed = True

    async def start(self) -> None:
        """Connect and subscribe; if Redis is not there yet, start as if it had just gone away."""
        try:
            await self.client.ping()
        except RedisError as exc:
            self.failed(exc)
            return
        self.up = True
        self._listen_once()

    def _listen_once(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = self._spawn(self._listen())

    def failed(self, exc: BaseException) -> None:
        """A Redis call failed: mark Redis down (warning once per outage), tell `on_down` once per
        outage, and start reconnecting."""
        if self.up or not self._recovering:
            policy = ("each replica enforces the limits on its own" if self.config.on_failure == "local"
                      else "limited calls are refused with 503")
            log.warning("Redis is unavailable (%s); %s until it is back", type(exc).__name__, policy)
        self.up = False
        if not self._recovering:
            self._recovering = True
            self._spawn(self._reconnect())
            self.on_down()

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self.client.ping()
            except RedisError:
                continue
            break
        self.up = True
        self._recovering = False
        self.reseed = True
        log.warning("Redis is reachable again; reconciling shared state")
        self.on_message("flush", "")
        self._listen_once()
        await self.on_reconnect()

    async def _listen(self) -> None:
        """Invalidation messages from every replica, until `close`.

        Each read waits at most a second and the loop checks `_closing`: a cancellation that
        arrives as redis-py's read timeout fires is taken for the timeout and lost, so
        cancelling alone could leave `close` waiting for ever.
        """
        pubsub = self.listener.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            while not self._closing:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_WAIT_SECONDS)
                if message and message.get("type") == "message":
                    kind, _, value = message["data"].decode().partition(" ")
                    self.on_message(kind, value)
        except (RedisError, OSError) as exc:
            self.failed(exc)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cached_identity(self, key_hash: str) -> tuple[KeyRecord, dict[str, float], float] | None:
        """The key, its owner's limits and the entry's expiry from the shared cache, or None on a
        miss or outage."""
        if not self.up:
            return None
        try:
            raw = await self.client.get(KEY_CACHE + key_hash)
        except RedisError as exc:
            self.failed(exc)
            return None
        return decode_identity(raw) if raw else None

    async def cache_identity(self, record: KeyRecord, owner_limits: dict[str, float]) -> float | None:
        """Share a key loaded from the store; when the entry expires, or None if it was not written
        (Redis away, or the key was just invalidated)."""
        if not self.up:
            return None
        try:
            ttl = max(1, int(self.config.key_cache_ttl_seconds))
            until = time.time() + ttl
            written = await self._cache(keys=[KEY_CACHE + record.hash, GONE + record.hash],
                                        args=[encode_identity(record, owner_limits, until), ttl])
        except RedisError as exc:
            self.failed(exc)
            return None
        return until if written else None

    async def cached_identities(self) -> list[tuple[str, KeyRecord, dict[str, float]]]:
        """Every entry of the shared key cache, for reconciliation (`freshness`)."""
        found = []
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=KEY_CACHE + "*", count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                found += await self._read(batch)
                batch = []
        if batch:
            found += await self._read(batch)
        return found

    async def _read(self, names: list[bytes]) -> list[tuple[str, KeyRecord, dict[str, float]]]:
        values = await self.client.mget(names)
        entries = []
        for name, raw in zip(names, values, strict=True):
            if raw:
                record, owner_limits, _ = decode_identity(raw)
                entries.append((name.decode()[len(KEY_CACHE):], record, owner_limits))
        return entries

    async def invalidate(self, kind: str, value: str, key_hashes: list[str]) -> bool:
        """Drop cached keys everywhere: delete the shared entries, tell every replica."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                queue_invalidation(pipe, kind, value, key_hashes, TOMBSTONE_SECONDS)
                await pipe.execute()
        except RedisError as exc:
            self.failed(exc)
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
        await self.listener.aclose()
