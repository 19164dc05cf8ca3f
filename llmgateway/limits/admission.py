"""Admission: which limits bind a call, which limiter counts them, and settling afterwards.

With Redis configured and up, the shared limiter counts for every replica. Without Redis, this
process's own counters do, seeded from the store so that a restart does not hand out a fresh
budget. While Redis is away under `redis.on_failure = "local"`, rate and concurrency limits are
counted in-process (per replica) and budgets are held in the shared store (`holds`).

Open calls that hold a concurrency slot or a budget are tracked here: slots live under a short
lease that `renew` extends while the call runs, so the slots of a replica that died free
themselves within a lease, and a Redis outage can publish the open budget reservations.
"""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from ..catalog.endpoints import Endpoint
from ..cluster.shared import SharedState
from ..config import Config, ModelConfig
from ..errors import GatewayError
from ..ops.metrics import LIMIT_REFUSALS, NoMetrics
from ..records import KeyRecord, UsageEvent
from ..store import Store, StoreError
from .holds import StoreBudgets
from .local import LocalLimiter
from .rules import (
    BUDGET_KINDS,
    DAY,
    KIND_OF,
    MICROS,
    Check,
    Ticket,
    Verdict,
    build_checks,
    cost_micros,
    merged,
    period_end,
    period_of,
    rate_headers,
    refusal,
    reservation,
)

BUDGETS = ("cost_per_day", "cost_per_week", "tokens_per_day", "tokens_per_week")


class Admission:
    def __init__(self, config: Config, shared: SharedState | None, budgets: StoreBudgets | None = None,
                 metrics: NoMetrics | None = None) -> None:
        self.metrics = metrics or NoMetrics()
        self.limits = config.limits
        self.on_failure = config.redis.on_failure
        self.shared = shared
        self.budgets = budgets
        self.local = LocalLimiter()
        self.open: dict[str, Ticket] = {}

    def checks(self, key: KeyRecord, owner_limits: dict[str, float], model: ModelConfig, endpoint: Endpoint,
               body: dict) -> list[Check]:
        subjects = [
            (f"key:{key.id}", merged(self.limits.key, key.limits)),
            (f"user:{key.owner}", merged(self.limits.user, owner_limits)),
            (f"model:{model.id}:user:{key.owner}", model.limits),
        ]
        subjects = [(s, limits) for s, limits in subjects if limits]
        if not subjects:
            return []
        prompt, completion = reservation(endpoint, body, self.limits.prompt_bytes_per_token,
                                         self.limits.default_max_tokens)
        cost = cost_micros(prompt, completion, model.prompt_cost_per_1k, model.completion_cost_per_1k)
        return build_checks(subjects, prompt + completion, cost, model.free, time.time())

    async def admit(self, request_id: str, checks: list[Check], free_model: bool) -> Ticket:
        """Reserve for the call, or raise its 429 (or 503 when Redis is away and the policy refuses)."""
        lease = self.limits.concurrency_lease_seconds
        verdict = None
        if self.shared is not None and self.shared.up:
            try:
                verdict = await self.shared.limiter.admit(checks, request_id, lease)
            except RedisError as exc:
                self.shared.failed(exc)
        if verdict is None:
            if self.shared is not None and self.on_failure == "refuse":
                raise GatewayError(503, "Rate limiting is unavailable; try again shortly.", "server_error",
                                   "limits_unavailable", headers={"Retry-After": "1"})
            if self.shared is not None and self.budgets is not None and any(c.kind in BUDGET_KINDS for c in checks):
                verdict = await self._admit_outage(request_id, checks, lease)
            else:
                verdict = self.local.admit_now(checks, request_id, lease)
        if not verdict.allowed:
            self.metrics.refused(LIMIT_REFUSALS[checks[verdict.refused].kind])
            raise refusal(checks, verdict)
        ticket = Ticket(request_id, checks, verdict, free_model, held=verdict.backend == "store",
                        headers=rate_headers(checks, verdict))
        if any(c.kind == "conc" or c.kind in BUDGET_KINDS for c in checks):
            self.open[request_id] = ticket
        return ticket

    async def _admit_outage(self, request_id: str, checks: list[Check], lease: float) -> Verdict:
        """Redis is away: rate and concurrency limits in-process, budgets held in the store."""
        assert self.budgets is not None
        inner = [i for i, c in enumerate(checks) if c.kind not in BUDGET_KINDS]
        outer = [i for i, c in enumerate(checks) if c.kind in BUDGET_KINDS]
        rates = [checks[i] for i in inner]
        local = self.local.admit_now(rates, request_id, lease)
        used, resets = [0] * len(checks), [0.0] * len(checks)
        for j, i in enumerate(inner):
            used[i], resets[i] = local.used[j], local.resets[j]
        if not local.allowed:
            return Verdict(False, used, resets, inner[local.refused], local.retry_after, local.second, "store")
        try:
            refused, before = await self.budgets.hold(request_id, [checks[i] for i in outer])
        except StoreError as exc:
            self.local.undo(rates, request_id, local)
            raise GatewayError(503, "Budgets cannot be checked right now; try again shortly.", "server_error",
                               "limits_unavailable", headers={"Retry-After": "1"}) from exc
        now = time.time()
        for j, i in enumerate(outer):
            used[i] = before[j] + (checks[i].amount if refused < 0 else 0)
            resets[i] = checks[i].period_end - now
        if refused >= 0:
            self.local.undo(rates, request_id, local)
            i = outer[refused]
            return Verdict(False, used, resets, i, resets[i], local.second, "store")
        return Verdict(True, used, resets, -1, 0.0, local.second, "store")

    def outage_began(self) -> None:
        """Redis just failed: budgets move to the store, starting with what is open now."""
        if self.budgets is not None and self.on_failure == "local":
            self.budgets.begin([t for t in self.open.values() if t.verdict.backend == "redis"])

    def settle(self, ticket: Ticket, event: UsageEvent | None) -> None:
        """Swap the reservation for the real usage (none when the call produced no event)."""
        if ticket.settled:
            return
        ticket.settled = True
        self.open.pop(ticket.request_id, None)
        tokens = event.prompt_tokens + event.completion_tokens if event else 0
        cost = round(event.cost * MICROS) if event else 0
        self._settle(ticket, tokens, cost)
        if ticket.held and event is None and self.budgets is not None:
            self.budgets.release(ticket.request_id)

    def release_slots(self, ticket: Ticket) -> None:
        """Free the ticket's concurrency slots now; its budgets settle later with the counted usage."""
        slots = [c for c in ticket.checks if c.kind == "conc"]
        if ticket.settled or not slots:
            return
        ticket.checks = [c for c in ticket.checks if c.kind != "conc"]
        self._settle(Ticket(ticket.request_id, slots, ticket.verdict, ticket.free_model), 0, 0)

    def _settle(self, ticket: Ticket, tokens: int, cost: int) -> None:
        backend = ticket.verdict.backend
        if backend == "redis":
            if self.shared is not None and self.shared.up:
                self.shared.limiter.settle(ticket, tokens, cost)
        elif backend == "store":
            self.local.settle(ticket, tokens, cost, [c for c in ticket.checks if c.kind not in BUDGET_KINDS])
        else:
            self.local.settle(ticket, tokens, cost)

    async def renew(self) -> None:
        """Scheduler job: extend the lease of every concurrency slot an open call holds."""
        lease = self.limits.concurrency_lease_seconds
        shared_slots, local_slots = [], []
        for ticket in list(self.open.values()):
            for check in ticket.checks:
                if check.kind == "conc":
                    slots = shared_slots if ticket.verdict.backend == "redis" else local_slots
                    slots.append((check.counter, ticket.request_id))
        self.local.renew_now(local_slots, lease)
        if shared_slots and self.shared is not None and self.shared.up:
            try:
                await self.shared.limiter.renew(shared_slots, lease)
            except RedisError as exc:
                self.shared.failed(exc)


def budget_spend(store: Store, name: str, group: str, free_models: list[str], now: float,
                 user: str | None = None) -> tuple[str, float, dict[str, float]]:
    """(period, period end, spend per user or key) of one budget in its current period, from the store.

    Cost budgets count every model's cost; token budgets count the free models' tokens only.
    """
    period, end = period_of(name, now)
    since = end - (DAY if name.endswith("_day") else 7 * DAY)
    cost = name.startswith("cost")
    spent: dict[str, float] = {}
    for model in [None] if cost else free_models:
        for row in store.usage_summary(group, since=since, user=user, model=model):
            value = row["cost"] if cost else row["prompt_tokens"] + row["completion_tokens"]
            spent[row["group"]] = spent.get(row["group"], 0) + value
    return period, end, spent


def spent_in_store(store: Store, free_models: list[str], now: float) -> dict[str, tuple[int, float]]:
    """Budget counters as the store sees them: per user and key, this day and week.

    Blocking (runs in the store pool). Budget holds of calls admitted during a Redis outage count
    until their events are stored. Values are lower bounds of the truth (events still in a
    replica's ledger buffer are not in the store yet), so callers only ever raise counters to them.
    """
    totals: dict[str, tuple[int, float]] = {}
    for name in BUDGETS:
        scale = MICROS if name.startswith("cost") else 1
        for group in ("user", "key"):
            period, end, spent = budget_spend(store, name, group, free_models, now)
            for who, value in spent.items():
                totals[f"{group}:{who}:{KIND_OF[name]}:{period}"] = (round(value * scale), end)
    for counter, held in store.held_budgets(now).items():
        value, end = totals.get(counter, (0, period_end(counter.rsplit(":", 1)[1])))
        totals[counter] = (value + held, end)
    return totals


def quota_status(store: Store, username: str, limits: dict[str, float], free_models: list[str],
                 now: float) -> dict | None:
    """A person's budgets for the current day and week: limit, spent, remaining (blocking; for the portal)."""
    budgets = []
    for name in BUDGETS:
        limit = limits.get(name)
        if not limit:
            continue
        _, end, spent_by_user = budget_spend(store, name, "user", free_models, now, user=username)
        spent = spent_by_user.get(username, 0)
        budgets.append({"name": name, "limit": limit, "spent": spent, "remaining": max(0.0, limit - spent),
                        "resets_at": end})
    if not budgets:
        return None
    parts = []
    for b in budgets:
        unit, period = b["name"].split("_per_")
        shown = (lambda v: f"{v:.2f}") if unit == "cost" else (lambda v: f"{int(v):,}")
        parts.append(f"{unit} this {period}: {shown(b['remaining'])} of {shown(b['limit'])} left")
    return {"budgets": budgets, "summary": "Remaining " + "; ".join(parts) + "."}
