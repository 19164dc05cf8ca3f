"""Budgets kept in the store while Redis is away, so that an outage cannot overspend them.

Each replica's in-process counters know only its own calls: two replicas falling back to them
would each spend the whole budget. The store is shared and up while Redis is down, so during an
outage a budgeted call is admitted by holding its reservation in the store (`Store.reserve_budgets`:
checked against the stored events plus every replica's live holds, in one atomic step). A hold
counts until the call's usage event is stored, so a settled call whose event still waits in a
ledger buffer is never counted as free.

When a replica sees Redis fail it first makes what it had admitted through Redis visible in the
store: a hold for every budgeted call still open, and a ledger flush for the ones already
settled. It admits budgeted calls only after that and `redis.timeout_seconds` more, by which time
a replica under traffic has seen the outage too and done the same. Rate and concurrency limits
stay in-process meanwhile (per replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..store import Store, StoreError
from ..store.base import BudgetHold
from .rules import BUDGET_KINDS, DAY, Check, Ticket

log = logging.getLogger("llmgateway.limits")

InThread = Callable[..., Awaitable[Any]]
UNLIMITED = 1 << 62
SCALE = {"cost_d": 1_000_000, "cost_w": 1_000_000, "tok_d": 1, "tok_w": 1}
FIELD = {"user": "user", "key": "key_id"}


def holds_for(checks: Iterable[Check], free_models: list[str], unlimited: bool = False) -> list[BudgetHold]:
    """The store holds of a call's budget checks (`unlimited`: holds that always fit)."""
    holds = []
    for check in checks:
        if check.kind not in BUDGET_KINDS:
            continue
        group, _, who = check.subject.partition(":")
        since = check.period_end - (DAY if check.kind.endswith("_d") else 7 * DAY)
        tokens = check.kind.startswith("tok")
        holds.append(BudgetHold(check.counter, FIELD[group], who, since, tokens,
                                tuple(free_models) if tokens else (), SCALE[check.kind], check.amount,
                                UNLIMITED if unlimited else check.limit))
    return holds


class StoreBudgets:
    """One replica's side of the budgets held in the store during a Redis outage."""

    def __init__(self, store: Store, in_thread: InThread, flush: Callable[[], Awaitable[Any]],
                 free_models: Callable[[], list[str]], hold_seconds: float, grace_seconds: float) -> None:
        self.store = store
        self.in_thread = in_thread
        self.flush = flush
        self.free_models = free_models
        self.hold_seconds = hold_seconds
        self.grace_seconds = grace_seconds
        self._ready: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

    def begin(self, open_tickets: list[Ticket]) -> None:
        """Redis just failed: publish what this replica admitted through it, then admit from the store."""
        ready = self._ready = asyncio.Event()
        self._spawn(self._publish(open_tickets, ready))

    async def _publish(self, tickets: list[Ticket], ready: asyncio.Event) -> None:
        started = time.monotonic()
        try:
            now = time.time()
            for ticket in tickets:
                holds = holds_for(ticket.checks, self.free_models(), unlimited=True)
                if holds and not ticket.settled:
                    await self.in_thread(self.store.reserve_budgets, ticket.request_id, holds, now,
                                         now + self.hold_seconds)
                    ticket.held = True
            await self.flush()
        except StoreError as exc:
            log.warning("could not record open reservations in the store at the Redis outage: %s", exc)
        finally:
            await asyncio.sleep(max(0.0, self.grace_seconds - (time.monotonic() - started)))
            ready.set()

    async def hold(self, request_id: str, checks: list[Check]) -> tuple[int, list[int]]:
        """Hold a call's budgets in the store: (index of the refused check or -1, use before it)."""
        if self._ready is not None:
            await self._ready.wait()
        now = time.time()
        return await self.in_thread(self.store.reserve_budgets, request_id, holds_for(checks, self.free_models()),
                                    now, now + self.hold_seconds)

    def release(self, request_id: str) -> None:
        """The call made no usage event: its holds go (in the background)."""
        self._spawn(self._release(request_id))

    async def _release(self, request_id: str) -> None:
        try:
            await self.in_thread(self.store.release_budgets, request_id)
        except StoreError as exc:
            log.warning("could not release a budget hold (it expires by itself): %s", exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
