"""Background jobs on APScheduler, in the gateway's own process and event loop.

Each job runs at most one instance at a time (`max_instances=1`), missed runs are merged
(`coalesce`), and a failure is logged and the job simply runs again next time (`guarded`, which
also counts each job's runs, failures and last success for the metrics; the job's label is its id).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ..gateway import Gateway
from ..usage.rollups import retention, rollups
from .log import flush_logs
from .metrics import NoMetrics

log = logging.getLogger("llmgateway.jobs")


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


def make_scheduler(gateway: Gateway, loop: asyncio.AbstractEventLoop) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(event_loop=loop)
    jobs = gateway.config.jobs
    every = {"max_instances": 1, "coalesce": True}
    metrics = gateway.metrics
    scheduler.add_job(guarded("usage-flush", gateway.flush, metrics), "interval",
                      seconds=gateway.config.usage.flush_interval_seconds, id="usage-flush",
                      next_run_time=datetime.now(), **every)
    scheduler.add_job(flush_logs, "interval", seconds=1, id="log-flush", **every)
    scheduler.add_job(guarded("journal-progress", gateway.journal.progress, metrics), "interval",
                      seconds=gateway.config.usage.journal_progress_seconds, id="journal-progress", **every)
    scheduler.add_job(guarded("rollups", lambda: rollups(gateway, jobs), metrics), "interval",
                      seconds=jobs.rollup_interval_seconds, id="rollups", **every)
    scheduler.add_job(guarded("retention", lambda: retention(gateway, jobs), metrics), "interval",
                      seconds=jobs.retention_interval_seconds, id="retention", **every)
    scheduler.add_job(guarded("models", gateway.refresh_models, metrics), "interval",
                      seconds=gateway.config.admin.catalog_refresh_seconds, id="models", **every)
    scheduler.add_job(guarded("slot-leases", gateway.admission.renew, metrics), "interval",
                      seconds=gateway.config.limits.concurrency_lease_seconds / 3, id="slot-leases", **every)
    if gateway.shared is not None:
        scheduler.add_job(guarded("reconcile", gateway.reconcile, metrics), "interval",
                          seconds=gateway.config.redis.reconcile_interval_seconds, id="reconcile", **every)
    return scheduler
