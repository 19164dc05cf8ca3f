"""Usage rollups and retention, the two jobs that keep the usage tables in shape.

Every replica schedules them (`ops.scheduler`); each takes a lease in the store first, so one
replica does the work per run. Both are idempotent anyway (rollups replace their rows, retention
deletes by age), so a lease lost mid-run costs work, never correctness.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

from ..config import JobsConfig
from ..gateway import Gateway
from ..store import BUCKETS

log = logging.getLogger("llmgateway.jobs")

HOLDER = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
RECENT_BUCKETS = {"hour": 3, "day": 2}


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
