"""The gateway core: everything the request path and the background jobs share.

No Tornado web code here: handlers ask this object to authenticate, prepare and relay a call,
and it answers with records, bytes and `GatewayError`s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from redis.exceptions import RedisError

from . import audit
from .audit import Actor
from .auth.keys import KEY_PATTERN, KeyCache, bearer_key, hash_key
from .catalog import models as catalog
from .catalog.routing import Router
from .cluster import freshness
from .cluster.shared import EPOCH, SharedState
from .config import Config, ConfigError
from .errors import GatewayError, unauthorized
from .limits.admission import Admission, quota_status, spent_in_store
from .limits.holds import StoreBudgets
from .limits.rules import Ticket, merged
from .ops.metrics import Metrics, NoMetrics
from .records import KeyRecord, ModelRecord, UsageEvent
from .relay.upstream import UpstreamClient
from .store import Store, StoreError
from .usage.journal import Journal, Relayed
from .usage.ledger import UsageLedger
from .usage.tokencount import TokenCounter

log = logging.getLogger("llmgateway")
T = TypeVar("T")
# A budget hold taken during a Redis outage outlives the longest call by this much.
HOLD_MARGIN_SECONDS = 60.0


class Gateway:
    """Owns the store, key cache, router, ledger and upstream client of one process."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.metrics = Metrics(self) if config.metrics.enabled else NoMetrics()
        self.store = self.metrics.timed_store(store)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store")
        self.keys = KeyCache(config.keys.cache_ttl_seconds, config.keys.negative_ttl_seconds,
                             config.keys.cache_max_entries, config.keys.negative_max_entries)
        served, self.model_problems = catalog.build(config, [])
        self.router = Router(served)
        self.ledger = UsageLedger(
            self.store, config.usage.spool_dir, config.usage.max_buffer_events, config.usage.flush_batch
        )
        self.journal = Journal(config.usage.journal_dir)
        self.upstream = UpstreamClient(config.upstream)
        self.counter = TokenCounter(self.upstream.post_json)
        self.last_used: dict[str, float] = {}
        self.in_flight = 0
        self.open_calls: set[Any] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task] = set()
        self.shared = (SharedState(config.redis, self.invalidated, self.reconcile, self.redis_down)
                       if config.redis.url else None)
        budgets = (StoreBudgets(self.store, self.in_thread, self.flush, lambda: self.free_models,
                                config.upstream.request_timeout + HOLD_MARGIN_SECONDS, config.redis.timeout_seconds)
                   if self.shared is not None else None)
        self.admission = Admission(config, self.shared, budgets, self.metrics)
        self.free_models = [m.id for m in config.models if m.free]
        self._refreshing: asyncio.Task | None = None
        self._catalog_records: list[ModelRecord] | None = None

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in the store pool, off the IOLoop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self) -> None:
        """Replay what a killed process left in the journal, connect to Redis (if configured) and
        load what was already spent into the counters."""
        await self._replay_journal()
        if self.shared is not None:
            await self.shared.start()
        await self.refresh_models()
        await self.reconcile()

    async def _replay_journal(self) -> None:
        events, segments = await self.in_thread(self.journal.replay)
        for event in events:
            self.ledger.append(event)
        try:
            self.journal.start(segments, self.ledger.appended)
        except OSError as exc:
            raise ConfigError(f"usage.journal_dir: cannot write the usage journal in "
                              f"{self.config.usage.journal_dir!r}: {exc.strerror}") from None
        if events:
            log.warning("replayed %d usage events from the journal of a process that stopped without flushing "
                        "(%d cut by the stop, recorded as estimated)", len(events), sum(e.estimated for e in events))
            await self.flush()

    async def refresh_models(self) -> None:
        """Scheduler job (and on a Redis announcement): serve the catalog the store now holds
        (nothing to do while it is what this replica already serves)."""
        try:
            records = await self.in_thread(self.store.list_models)
        except StoreError as exc:
            log.warning("could not read the model catalog; serving the previous one: %s", exc)
            return
        if records == self._catalog_records:
            return
        served, problems = catalog.build(self.config, records)
        self._catalog_records = records
        for model_id, problem in problems.items():
            if self.model_problems.get(model_id) != problem:
                log.error("model %s is not served by this replica: %s", model_id, problem)
        self.model_problems = problems
        self.router.replace(served)
        self.free_models = [m.id for m, _ in served if m.free]

    def models_changed(self) -> None:
        """Refresh soon, once, however many announcements arrive together."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh_models())

    async def _seed_local(self) -> None:
        totals = await self.in_thread(spent_in_store, self.store, self.free_models, time.time())
        self.admission.local.seed({name: value for name, (value, _) in totals.items()})

    async def authenticate(self, authorization: str | None) -> tuple[KeyRecord, dict[str, float]]:
        """The key record behind an Authorization header and its owner's limits, or a 401 GatewayError."""
        key_hash, cached = self.authenticate_cached(authorization)
        if cached is not None:
            return cached
        now = time.time()
        generation = self.keys.generation
        record, owner_limits, until = await self._lookup(key_hash)
        if generation == self.keys.generation:
            self.keys.put(key_hash, record, now, owner_limits, until)
        return self._admitted(record, owner_limits, now)

    def authenticate_cached(self, authorization: str | None
                            ) -> tuple[str, tuple[KeyRecord, dict[str, float]] | None]:
        """(key hash, the key and its owner's limits if this process has them cached), or a 401.

        The steady state needs no store, so it needs no await either: the /v1 door calls this
        first and awaits `authenticate` only on a miss."""
        key = bearer_key(authorization)
        if key is None and authorization and authorization.split(None, 1)[0].lower() != "bearer":
            raise unauthorized("The Authorization header must be 'Bearer YOUR_KEY': API keys are accepted as "
                               "bearer tokens only.")
        if key is None:
            raise unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.", "missing_api_key"
            )
        if not KEY_PATTERN.match(key):
            raise unauthorized("Incorrect API key provided.")
        key_hash = hash_key(key)
        now = time.time()
        found, record, owner_limits = self.keys.get(key_hash, now)
        return key_hash, self._admitted(record, owner_limits, now) if found else None

    def _admitted(self, record: KeyRecord | None, owner_limits: dict[str, float],
                  now: float) -> tuple[KeyRecord, dict[str, float]]:
        if record is None:
            raise unauthorized("Incorrect API key provided.")
        if not record.active:
            raise unauthorized("This API key has been revoked.", "revoked_api_key")
        if record.expires is not None and now >= record.expires:
            raise unauthorized("This API key has expired.", "expired_api_key")
        if record.owner_disabled:
            raise unauthorized("The account this API key belongs to has been disabled.", "user_disabled")
        self.last_used[record.id] = now
        return record, owner_limits

    async def _lookup(self, key_hash: str) -> tuple[KeyRecord | None, dict[str, float], float | None]:
        """A cache miss: the shared cache first, then the store (one pool call for key and owner).

        Also says until when this process may keep the answer (see `freshness`): no longer than
        the shared entry, or one reconciliation interval when there is none.
        """
        if self.shared is not None:
            cached = await self.shared.cached_identity(key_hash)
            if cached is not None:
                return cached
        try:
            record, owner_limits = await self.in_thread(self._load_identity, key_hash)
        except StoreError:
            log.exception("key lookup failed")
            raise GatewayError(503, "The key store is unavailable; try again shortly.", "server_error",
                               "store_unavailable") from None
        until = None
        if record is not None and self.shared is not None:
            until = await self.shared.cache_identity(record, owner_limits)
            if until is None:
                until = time.time() + self.config.redis.reconcile_interval_seconds
        return record, owner_limits, until

    def _load_identity(self, key_hash: str) -> tuple[KeyRecord | None, dict[str, float]]:
        record = self.store.key_by_hash(key_hash)
        if record is None:
            return None, {}
        owner = self.store.get_user(record.owner)
        if owner is None:
            return record, {}
        record.owner_disabled = owner.disabled
        return record, owner.limits

    def invalidated(self, kind: str, value: str) -> None:
        """A message on the invalidation channel (or a reconnect): drop what this process cached."""
        if kind == "key":
            self.keys.drop_key_id(value)
        elif kind == "user":
            self.keys.drop_owner(value)
        elif kind == "models":
            self.models_changed()
        else:
            self.keys.clear()
            self.models_changed()

    def redis_down(self) -> None:
        """Redis just failed (once per outage): budgets move to the store."""
        self.admission.outage_began()

    async def reconcile(self) -> None:
        """Scheduler job: make the counters and the shared key cache agree with the store (for any
        change of a key or its owner, see `freshness`).

        Budgets are reloaded at start, after a reconnect (calls admitted locally during the outage
        are in the store, not in Redis) and when Redis lost its data. Counters are only ever raised
        to the store's figures, so running this on every replica at once, or while traffic flows,
        never hands out budget twice.
        """
        shared = self.shared
        if shared is None or not shared.up:
            await self._seed_local()
            return
        try:
            if shared.reseed or not await shared.client.exists(EPOCH):
                shared.reseed = False
                totals = await self.in_thread(spent_in_store, self.store, self.free_models, time.time())
                await shared.limiter.seed(totals)
                await shared.client.set(EPOCH, str(time.time()))
            await freshness.repair(self)
        except RedisError as exc:
            shared.failed(exc)
            return
        await self.in_thread(self.store.purge_holds, time.time())

    async def audit(self, actor: Actor, action: str, target: str, details: dict[str, Any] | None = None) -> None:
        """Record a change in the audit log (in the store pool)."""
        await self.in_thread(audit.record, self.store, actor, action, target, details)

    async def forget_key(self, record: KeyRecord) -> None:
        """A key changed in the store: drop it from every replica's caches."""
        self.keys.drop_key_id(record.id)
        if self.shared is not None:
            await self.shared.invalidate("key", record.id, [record.hash])

    async def forget_user(self, username: str) -> None:
        """A person changed (disabled, limits): drop all their keys from every replica's caches."""
        self.keys.drop_owner(username)
        if self.shared is not None:
            hashes = [k.hash for k in await self.in_thread(self.store.list_keys, username)]
            await self.shared.invalidate("user", username, hashes)

    async def models_saved(self) -> None:
        """The catalog changed in the store: serve it here now, and on every replica at once."""
        await self.refresh_models()
        if self.shared is not None:
            await self.shared.invalidate("models", "*", [])

    async def quota(self, username: str, own_limits: dict[str, float]) -> dict | None:
        """What is left of a person's budgets today and this week, from the store (None: no budgets)."""
        limits = merged(self.config.limits.user, own_limits)
        return await self.in_thread(quota_status, self.store, username, limits, self.free_models, time.time())

    def settle(self, ticket: Ticket | None, event: UsageEvent | None) -> None:
        if ticket is not None:
            self.admission.settle(ticket, event)

    def release_slots(self, ticket: Ticket | None) -> None:
        """The response is over: free its concurrency slots before its usage is known."""
        if ticket is not None:
            self.admission.release_slots(ticket)

    def begin(self, call: Any = None, relay: Relayed | None = None) -> None:
        """A call (or its settlement) starts; shutdown waits for it, and the journal records it."""
        self.in_flight += 1
        self._idle.clear()
        if call is not None:
            self.open_calls.add(call)
            model = call.route.model
            self.journal.opened(call.request_id, call.ts, call.key.id, call.key.owner, model.id, call.endpoint,
                                call.stream, call.prompt_estimate,
                                (model.prompt_cost_per_1k, model.completion_cost_per_1k), relay)

    def end(self, call: Any = None) -> None:
        self.in_flight -= 1
        if call is not None:
            self.open_calls.discard(call)
            self.journal.ended(call.request_id)
        if self.in_flight == 0:
            self._idle.set()

    def cancel_all(self, status: int) -> None:
        """Cut every open call (after the drain period); each still settles what it produced."""
        for call in list(self.open_calls):
            call.cancel(status)

    def record(self, event: UsageEvent) -> None:
        """A call's usage: into the journal first (a kill after this line loses nothing), then the ledger."""
        self.journal.closed(event)
        self.ledger.append(event)
        self.metrics.recorded(event)

    def in_background(self, coro: Any) -> None:
        """Run settlement work (token counting) after the response; shutdown waits for it."""
        self.begin()
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            self.end()
            if not t.cancelled() and t.exception() is not None:
                log.error("settlement failed", exc_info=t.exception())

        task.add_done_callback(done)

    async def cancel_settlements(self) -> None:
        """At shutdown: settlements still counting record an estimate now instead."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def flush(self) -> int:
        """Scheduler job: write usage and key last-use times to the store."""
        touched, self.last_used = self.last_used, {}
        if touched:
            try:
                await self.in_thread(self.store.touch_keys, touched)
            except StoreError as exc:
                log.warning("could not record key last-use times: %s", exc)
        self.journal.rotate(self.ledger.appended)
        started = time.perf_counter()
        written = await self.in_thread(self.ledger.flush)
        self.metrics.flushed(time.perf_counter() - started)
        self.journal.retire(self.ledger.secured)
        return written

    def redis_state(self) -> str:
        """"off" (not configured), "up", or "down" (limits under `redis.on_failure` meanwhile)."""
        if self.shared is None:
            return "off"
        return "up" if self.shared.up else "down"

    async def ready(self) -> bool:
        try:
            await self.in_thread(self.store.ping)
        except StoreError:
            return False
        return True

    async def drain(self, grace: float) -> None:
        """Wait for open calls and settlements, up to `grace` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d calls still open after %.0f s of draining", self.in_flight, grace)

    async def stop_shared(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def close(self) -> None:
        self.journal.close(self.ledger.secured, self.ledger.appended)
        self.upstream.close()
        self.executor.shutdown(wait=True)
        self.store.close()
