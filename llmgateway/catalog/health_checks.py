"""Active health checks: a GET of each upstream's health path at its model's interval.

The default path, `/health`, is vLLM's (and TGI's and llama.cpp's native server's) health
endpoint. llama-cpp-python's server has none: it answers 404 without taking its model lock, and
any answer below 500 counts as "the server is up". That lock matters: the server runs one
request at a time, and a request that takes the lock (GET /v1/models too) stops the stream it is
generating. So an upstream is never checked while this process has a call in flight to it (the
call is itself the evidence), and a check never runs a model.

A check passes on any HTTP status below 500 and fails on no connection, no answer within
`CHECK_TIMEOUT` seconds, or a 5xx. What a result does to the upstream is `routing`'s business.
"""

from __future__ import annotations

import asyncio
import time

from ..relay.upstream import UpstreamClient
from .routing import CheckResult, Route, Router, UpstreamState

CHECK_TIMEOUT = 5.0
# How often the loop looks for due checks at most; a model added through the admin API gets its
# first check within this time.
MAX_TICK = 1.0
MIN_TICK = 0.02


class HealthChecker:
    """Runs the checks of every served model's upstreams; started and stopped by the server."""

    def __init__(self, router: Router, client: UpstreamClient) -> None:
        self.router = router
        self.client = client
        self.running: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Start each due check as its own task (a slow upstream delays no other), until cancelled."""
        try:
            while True:
                now = time.monotonic()
                tick = MAX_TICK
                for route in list(self.router.routes.values()):
                    interval = route.model.health_check_seconds
                    if not interval or not route.model.active:
                        continue
                    for upstream in route.pool:
                        if upstream.checking:
                            continue
                        if upstream.next_check <= now:
                            self._start(route, upstream, now)
                        tick = min(tick, max(upstream.next_check - now, MIN_TICK))
                await asyncio.sleep(tick)
        finally:
            for task in list(self.running):
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)

    def _start(self, route: Route, upstream: UpstreamState, now: float) -> None:
        upstream.next_check = now + route.model.health_check_seconds
        if upstream.outstanding:
            return  # a call in flight is evidence enough, and a check could interrupt it
        upstream.checking = True
        task = asyncio.ensure_future(self.check(route, upstream))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def check(self, route: Route, upstream: UpstreamState) -> CheckResult:
        """One check of one upstream, its result applied to the upstream's state."""
        model = route.model
        try:
            status, error = await self.client.probe(upstream.url + model.health_check_path,
                                                    min(CHECK_TIMEOUT, max(model.health_check_seconds, 1.0)))
        finally:
            upstream.checking = False
        ok = status < 500
        result = CheckResult(time.time(), ok, None if status == 599 else status,
                             error if error is not None else None if ok else f"HTTP {status}")
        now = time.monotonic()
        upstream.next_check = now + model.health_check_seconds
        if ok:
            upstream.check_passed(now, result)
        else:
            upstream.check_failed(model, now, result)
        return result
