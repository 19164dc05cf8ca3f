"""In-process counters: exact limits for one replica, and the fallback when Redis is away.

The same rules as the Redis scripts in `redis`: minute windows are 60 one-second buckets,
budgets are totals per calendar period, concurrency is a set of request ids with a short lease
that the open call's replica keeps renewing, so a lost settlement cannot hold a slot for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .rules import DAY, WEEK_OFFSET_DAYS, WINDOW_SECONDS, Check, Ticket, Verdict

PRUNE_EVERY_SECONDS = 60.0


class LocalLimiter:
    name = "local"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.windows: dict[str, dict[int, int]] = {}
        self.totals: dict[str, int] = {}
        self.slots: dict[str, dict[str, float]] = {}
        self._next_prune = 0.0

    async def admit(self, checks: list[Check], request_id: str, lease: float) -> Verdict:
        return self.admit_now(checks, request_id, lease)

    def admit_now(self, checks: list[Check], request_id: str, lease: float) -> Verdict:
        now = self.clock()
        if now >= self._next_prune:
            self.prune(now)
        second = int(now)
        used, resets = [], []
        refused, retry_after = -1, 0.0
        for i, check in enumerate(checks):
            current, reset, retry = self._state(check, now, second)
            used.append(current)
            resets.append(reset)
            if refused < 0 and current + check.amount > check.limit:
                refused, retry_after = i, retry
        if refused >= 0:
            return Verdict(False, used, resets, refused, retry_after, second, self.name)
        for i, check in enumerate(checks):
            if check.kind in ("rpm", "tpm"):
                buckets = self.windows.setdefault(check.counter, {})
                buckets[second] = buckets.get(second, 0) + check.amount
                resets[i] = WINDOW_SECONDS - (now - second)
            elif check.kind == "conc":
                self.slots.setdefault(check.counter, {})[request_id] = now + lease
            else:
                self.totals[check.counter] = self.totals.get(check.counter, 0) + check.amount
            used[i] += check.amount
        return Verdict(True, used, resets, -1, 0.0, second, self.name)

    def _state(self, check: Check, now: float, second: int) -> tuple[int, float, float]:
        """(used, seconds until fully reset, seconds until this call's amount would fit)."""
        if check.kind in ("rpm", "tpm"):
            buckets = self.windows.get(check.counter, {})
            for s in [s for s in buckets if s <= second - WINDOW_SECONDS]:
                del buckets[s]
            used = sum(buckets.values())
            reset = (max(buckets) + WINDOW_SECONDS - now) if buckets else 0.0
            need, freed, retry = used + check.amount - check.limit, 0, float(WINDOW_SECONDS)
            for s in sorted(buckets):
                freed += buckets[s]
                if freed >= need:
                    retry = s + WINDOW_SECONDS - now
                    break
            return used, reset, retry
        if check.kind == "conc":
            slots = self.slots.get(check.counter, {})
            for rid in [r for r, until in slots.items() if until <= now]:
                del slots[rid]
            return len(slots), 0.0, 1.0
        return self.totals.get(check.counter, 0), check.period_end - now, check.period_end - now

    def undo(self, checks: list[Check], request_id: str, verdict: Verdict) -> None:
        """Take back an admission that another limiter then refused."""
        for check in checks:
            if check.kind in ("rpm", "tpm"):
                buckets = self.windows.get(check.counter, {})
                if verdict.second in buckets:
                    buckets[verdict.second] -= check.amount
            elif check.kind == "conc":
                self.slots.get(check.counter, {}).pop(request_id, None)
            else:
                self.totals[check.counter] = max(0, self.totals.get(check.counter, 0) - check.amount)

    def settle(self, ticket: Ticket, tokens: int, cost_micros: int, checks: list[Check] | None = None) -> None:
        """Settle the ticket's checks (or only `checks`, those this limiter admitted)."""
        for check in ticket.checks if checks is None else checks:
            actual = cost_micros if check.kind.startswith("cost") else tokens
            if check.kind == "tpm":
                buckets = self.windows.get(check.counter, {})
                if ticket.verdict.second in buckets:
                    buckets[ticket.verdict.second] += actual - check.amount
            elif check.kind == "conc":
                self.slots.get(check.counter, {}).pop(ticket.request_id, None)
            elif check.kind not in ("rpm",):
                self.totals[check.counter] = max(0, self.totals.get(check.counter, 0) + actual - check.amount)

    async def renew(self, slots: list[tuple[str, str]], lease: float) -> int:
        return self.renew_now(slots, lease)

    def renew_now(self, slots: list[tuple[str, str]], lease: float) -> int:
        """Extend the lease of these (counter, request id) slots that are still held; how many were."""
        until = self.clock() + lease
        renewed = 0
        for counter, request_id in slots:
            held = self.slots.get(counter)
            if held is not None and request_id in held:
                held[request_id] = until
                renewed += 1
        return renewed

    def seed(self, totals: dict[str, int]) -> None:
        """Raise budget counters to what the store says was spent (after a restart or an outage)."""
        for counter, value in totals.items():
            if value > self.totals.get(counter, 0):
                self.totals[counter] = value

    def prune(self, now: float) -> None:
        """Forget counters whose period is over, so memory follows the active subjects, not every
        subject ever seen: budgets of past days and weeks, windows with no call in the last minute,
        empty or expired concurrency slots."""
        self._next_prune = now + PRUNE_EVERY_SECONDS
        self.totals = {c: v for c, v in self.totals.items() if _period_end(c) > now}
        self.windows = {c: b for c, b in self.windows.items() if b and max(b) > now - WINDOW_SECONDS}
        self.slots = {c: live for c, s in self.slots.items() if (live := {r: u for r, u in s.items() if u > now})}


def _period_end(counter: str) -> float:
    """When a budget counter's period ends, from its name (`<subject>:<kind>:d<day>` or `w<week>`)."""
    period = counter.rsplit(":", 1)[-1]
    number = int(period[1:])
    if period[0] == "d":
        return (number + 1) * DAY
    return ((number + 1) * 7 - WEEK_OFFSET_DAYS) * DAY
