"""Background jobs on APScheduler, in the gateway's own process and event loop.

Each job runs at most one instance at a time (`max_instances=1`), missed runs are merged
(`coalesce`), and an exception is logged by APScheduler and the job simply runs again next time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .gateway import Gateway
from .log import flush_logs


def make_scheduler(gateway: Gateway, loop: asyncio.AbstractEventLoop) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(event_loop=loop)
    scheduler.add_job(
        gateway.flush,
        "interval",
        seconds=gateway.config.usage.flush_interval_seconds,
        id="usage-flush",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(),
    )
    scheduler.add_job(flush_logs, "interval", seconds=1, id="log-flush", max_instances=1, coalesce=True)

    async def purge_claims() -> None:
        """Forget used SAML assertion IDs and logged-out sessions once they could no longer be used."""
        await gateway.in_thread(gateway.store.purge_claims, time.time())

    scheduler.add_job(purge_claims, "interval", hours=1, id="claims-purge", max_instances=1, coalesce=True)
    return scheduler
