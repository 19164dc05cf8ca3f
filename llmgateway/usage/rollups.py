"""The background jobs besides the usage flush: rollups, retention, reconciliation.

Every replica schedules them. Rollups and retention take a lease in the store first, so one
replica does the work per run; both are idempotent anyway (rollups replace their rows, retention
deletes by age), so a lease lost mid-run costs work, never correctness. A failing run is logged
and the next run tries again.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from ..config import JobsConfig
from ..gateway import Gateway
from ..ops.metrics import NoMetrics
from ..store import BUCKETS

log = logging.getLogger("llmgateway.jobs")

HOLDER = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
RECENT_BUCKETS = {"hour": 3, "day": 2}


def guarded(name: str, job: Callable[[], Awaitable[object] | object],
            metrics: NoMetrics | None = None) -> Callable[[], Awaitable[None]]:
    """Run `job`, logging (not raising) a failure so the scheduler simply runs it again next time,
    and count the run for the metrics (runs, failures, last success)."""
    counted = metrics or NoMetrics()

    async def run() -> None:
        try:
            result = job()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("job %s failed; it runs again at its next interval", name)
            counted.job_ran(name, False)
            return
        counted.job_ran(name, True)

    return run


async def rollups(gateway: Gateway, config: JobsConfig, holder: str = HOLDER) -> int:
    """Rebuild the recent hourly and daily rollups (late events included) under a lease."""
    store = gateway.store
    if not await gateway.in_thread(store.acquire_lease, "rollups", holder, config.rollup_interval_seconds):
        return 0
    now = time.time()
    written = 0
    for bucket, size in BUCKETS.items():
        start = (now // size - RECENT_BUCKETS[bucket] + 1) * size
        written += await gateway.in_thread(store.rollup_usage, bucket, start, now + size)
    return written


async def retention(gateway: Gateway, config: JobsConfig, holder: str = HOLDER) -> int:
    """Drop raw events older than `jobs.retention_days` (0 keeps them for ever)."""
    if not config.retention_days:
        return 0
    store = gateway.store
    if not await gateway.in_thread(store.acquire_lease, "retention", holder, config.retention_interval_seconds):
        return 0
    deleted = await gateway.in_thread(store.delete_usage_before, time.time() - config.retention_days * 86400)
    deleted_claims = await gateway.in_thread(store.purge_claims, time.time())
    if deleted or deleted_claims:
        log.info("retention: %d usage events and %d expired claims removed", deleted, deleted_claims)
    return deleted
