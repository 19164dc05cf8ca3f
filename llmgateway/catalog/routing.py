"""Model -> upstream pool -> one upstream, by least outstanding requests, among the healthy ones.

A pool with several upstreams spreads load by picking the one with the fewest requests in flight
(relative to its weight). Each upstream carries its health: `eject_after_failures` failed calls
(or active checks) in a row eject it for a back-off (`eject_seconds`, doubled on each ejection in a
row, at most `eject_max_seconds`); then ONE call is let through as a trial (half-open) and its
success re-admits it. A call that never reached an upstream (or, with `failover_on_busy`, got a
429 or 503 before its first byte) moves on to the next upstream of the pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import ModelConfig
from ..redact import redact_url

log = logging.getLogger("llmgateway.routing")

HEALTHY, EJECTED, HALF_OPEN = "healthy", "ejected", "half-open"
BY_CALLS, BY_CHECKS = "calls", "checks"


@dataclass
class CheckResult:
    """The last active health check of an upstream: when (unix time), whether it passed, what it saw."""

    at: float
    ok: bool
    status: int | None
    error: str | None


@dataclass(eq=False)
class UpstreamState:
    """One upstream base URL and what the gateway knows about it right now.

    Compared by identity (a call's list of tried upstreams holds the states themselves). The
    counters only grow: they are read at scrape time, not reset. `failures` counts failed calls
    (not checks), `failovers` calls that moved on from it to the next upstream, `ejections` the
    times it was taken out. `down_until` (monotonic) ends the current ejection.
    """

    url: str
    weight: float
    outstanding: int = 0
    down_until: float = 0.0
    healthy: bool = True
    failures: int = 0
    failovers: int = 0
    ejections: int = 0
    consecutive: int = 0
    failed_checks: int = 0
    streak: int = 0
    trial: bool = False
    ejected_by: str = ""
    last_check: CheckResult | None = None
    next_check: float = 0.0
    checking: bool = False
    idle_waiters: list[asyncio.Future] = field(default_factory=list, repr=False)

    def state(self, now: float) -> str:
        if self.healthy:
            return HEALTHY
        return EJECTED if now < self.down_until else HALF_OPEN

    def call_succeeded(self) -> None:
        """A call got an answer (any status below 500): the upstream is trusted again."""
        self.trial = False
        self.consecutive = self.failed_checks = 0
        self.streak = 0
        if not self.healthy:
            self.healthy = True
            log.warning("upstream %s is back in its pool (a call succeeded)", redact_url(self.url))

    def call_failed(self, policy: ModelConfig, now: float) -> None:
        """A call failed (no connection, a timeout, a cut transfer, a 5xx): `eject_after_failures`
        in a row eject, and so does a failed trial call."""
        self.failures += 1
        self.consecutive += 1
        if self.trial or (self.healthy and self.consecutive >= policy.eject_after_failures):
            self._eject(policy, now, BY_CALLS)

    def call_undecided(self) -> None:
        """The call ended without telling anything (the client left): another call may be the trial."""
        self.trial = False

    def check_passed(self, now: float, result: CheckResult) -> None:
        """An active check got an answer below 500: failed checks are forgotten, failed calls
        are not (a server can answer its health path and fail its calls). Ejected by checks:
        back at once. Ejected by calls: its trial call may go now."""
        self.last_check = result
        self.failed_checks = 0
        if self.healthy:
            return
        if self.ejected_by == BY_CHECKS:
            self.healthy = True
            self.streak = 0
            log.warning("upstream %s is back in its pool (health check passed)", redact_url(self.url))
        else:
            self.down_until = min(self.down_until, now)

    def check_failed(self, policy: ModelConfig, now: float, result: CheckResult) -> None:
        """An active check failed: `eject_after_failures` in a row eject; an ejected upstream
        gets no trial call before the next check."""
        self.last_check = result
        self.failed_checks += 1
        if not self.healthy:
            self.down_until = max(self.down_until, now + policy.health_check_seconds)
        elif self.failed_checks >= policy.eject_after_failures:
            self._eject(policy, now, BY_CHECKS)

    def _eject(self, policy: ModelConfig, now: float, by: str) -> None:
        backoff = min(policy.eject_seconds * 2 ** min(self.streak, 30), policy.eject_max_seconds)
        failed = self.consecutive if by == BY_CALLS else self.failed_checks
        why = "its trial call failed" if self.trial else f"{failed} failed {by} in a row"
        self.healthy = False
        self.trial = False
        self.streak += 1
        self.ejections += 1
        self.ejected_by = by
        self.down_until = now + backoff
        log.warning("upstream %s of model %s ejected for %.1f s: %s", redact_url(self.url), policy.id, backoff, why)

    def describe(self, now: float) -> dict[str, Any]:
        """What /readyz and the admin API show (the URL without credentials)."""
        state = self.state(now)
        check = self.last_check
        return {
            "url": redact_url(self.url),
            "state": state,
            "healthy": self.healthy,
            "ejected_until": None if self.healthy else round(time.time() + self.down_until - now, 3),
            "trial_in_flight": self.trial,
            "consecutive_failures": self.consecutive,
            "failed_checks": self.failed_checks,
            "failures": self.failures,
            "failovers": self.failovers,
            "ejections": self.ejections,
            "in_flight": self.outstanding,
            "last_check": None if check is None else
            {"at": round(check.at, 3), "ok": check.ok, "status": check.status, "error": check.error},
        }

    def load(self) -> float:
        return self.outstanding / self.weight

    def enter(self) -> None:
        """A user's call to this upstream starts."""
        self.outstanding += 1

    def leave(self) -> None:
        """A user's call ends; the gateway's own calls waiting for a quiet upstream may go."""
        self.outstanding -= 1
        if not self.outstanding:
            waiters, self.idle_waiters = self.idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def quiet(self, timeout: float) -> bool:
        """Wait until no user call of this process is in flight to this upstream (False: timed out).

        A single-slot server such as llama-cpp-python's stops the call it is generating when
        another request reaches it, so the gateway's own counting calls wait for a quiet moment.
        """
        if not self.outstanding:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self.idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            if waiter in self.idle_waiters:
                self.idle_waiters.remove(waiter)
        return True


@dataclass
class Route:
    """A model the gateway serves: its config, upstream secret and pool."""

    model: ModelConfig
    secret: str
    pool: list[UpstreamState] = field(default_factory=list)

    def pick(self, tried: list[UpstreamState], now: float | None = None) -> UpstreamState | None:
        """The upstream for the next attempt of a call, or None if no untried one may be called.

        A half-open upstream takes the call as its one trial (so a steady flow of calls re-admits
        it); otherwise the healthy upstream with the least load, those whose last call failed last.
        """
        now = time.monotonic() if now is None else now
        best = None
        for u in self.pool:
            if u in tried:
                continue
            if not u.healthy:
                if not u.trial and now >= u.down_until:
                    u.trial = True
                    return u
                continue
            if best is None or (u.consecutive > 0, u.load()) < (best.consecutive > 0, best.load()):
                best = u
        return best

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until an upstream of this pool may be called again (at least 1)."""
        now = time.monotonic() if now is None else now
        waits = [u.down_until - now for u in self.pool if not u.healthy]
        return max(1, math.ceil(min(waits, default=1.0)))

    def health(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.monotonic() if now is None else now
        return [u.describe(now) for u in self.pool]


class Router:
    """The model catalog the hot path reads: id -> Route."""

    def __init__(self, models: list[tuple[ModelConfig, str]]) -> None:
        self.routes: dict[str, Route] = {}
        self.replace(models)

    def replace(self, models: list[tuple[ModelConfig, str]]) -> None:
        """Swap in a new catalog in one assignment; an upstream that stays keeps its state, so
        calls in flight release their slot where new calls count it."""
        old = {(model_id, u.url): u for model_id, route in self.routes.items() for u in route.pool}
        routes = {}
        for model, secret in models:
            pool = []
            for u in model.upstreams:
                state = old.get((model.id, u.url)) or UpstreamState(u.url, u.weight)
                state.weight = u.weight
                pool.append(state)
            routes[model.id] = Route(model, secret, pool)
        self.routes = routes

    def get(self, model_id: str) -> Route | None:
        route = self.routes.get(model_id)
        if route is None or not route.model.active:
            return None
        return route

    def visible(self) -> list[Route]:
        return [r for r in self.routes.values() if r.model.active]


    def health(self) -> dict[str, list[dict[str, Any]]]:
        """Each served model's upstreams and their state, for /readyz."""
        now = time.monotonic()
        return {r.model.id: r.health(now) for r in self.visible()}
