"""Model -> upstream pool -> one upstream, by least outstanding requests.

A pool with several upstreams spreads load by picking the one with the fewest requests in flight
(relative to its weight), and fails over to the next on a connect error before the first byte.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .config import ModelConfig

RETRY_AFTER_FAILURE = 5.0


@dataclass
class UpstreamState:
    """One upstream base URL and what the gateway knows about it right now.

    The counters only grow: they are read at scrape time, not reset.
    """

    url: str
    weight: float
    outstanding: int = 0
    down_until: float = 0.0
    healthy: bool = True
    failures: int = 0
    failovers: int = 0
    ejections: int = 0
    idle_waiters: list[asyncio.Future] = field(default_factory=list, repr=False)

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

    def candidates(self, now: float | None = None) -> list[UpstreamState]:
        """Upstreams in the order to try them: healthy by load first, recently failed last."""
        now = time.monotonic() if now is None else now
        return sorted(self.pool, key=lambda u: (u.down_until > now, u.load()))


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


def mark_down(upstream: UpstreamState) -> None:
    """Try this upstream last for a few seconds after it refused a connection."""
    upstream.down_until = time.monotonic() + RETRY_AFTER_FAILURE
