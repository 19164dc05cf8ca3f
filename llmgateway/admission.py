"""Admission: which limits bind a call, which limiter counts them, and settling afterwards.

With Redis configured and up, the shared limiter counts for every replica. Without Redis, or
while it is away under `redis.on_failure = "local"`, this process's own counters do, seeded from
the store so that a restart or an outage does not hand out a fresh budget.
"""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from .config import Config, ModelConfig
from .endpoints import Endpoint
from .errors import GatewayError
from .limits import (
    DAY,
    KIND_OF,
    MICROS,
    Check,
    Ticket,
    build_checks,
    cost_micros,
    merged,
    period_of,
    rate_headers,
    refusal,
    reservation,
)
from .limits_local import LocalLimiter
from .records import KeyRecord, UsageEvent
from .shared import SharedState
from .store import Store

BUDGETS = ("cost_per_day", "cost_per_week", "tokens_per_day", "tokens_per_week")


class Admission:
    def __init__(self, config: Config, shared: SharedState | None) -> None:
        self.limits = config.limits
        self.on_failure = config.redis.on_failure
        self.shared = shared
        self.local = LocalLimiter()

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
            verdict = self.local.admit_now(checks, request_id, lease)
        if not verdict.allowed:
            raise refusal(checks, verdict)
        return Ticket(request_id, checks, verdict, free_model, headers=rate_headers(checks, verdict))

    def settle(self, ticket: Ticket, event: UsageEvent | None) -> None:
        """Swap the reservation for the real usage (none when the call produced no event)."""
        if ticket.settled:
            return
        ticket.settled = True
        tokens = event.prompt_tokens + event.completion_tokens if event else 0
        cost = round(event.cost * MICROS) if event else 0
        self._settle(ticket, tokens, cost)

    def release_slots(self, ticket: Ticket) -> None:
        """Free the ticket's concurrency slots now; its budgets settle later with the counted usage."""
        slots = [c for c in ticket.checks if c.kind == "conc"]
        if ticket.settled or not slots:
            return
        ticket.checks = [c for c in ticket.checks if c.kind != "conc"]
        self._settle(Ticket(ticket.request_id, slots, ticket.verdict, ticket.free_model), 0, 0)

    def _settle(self, ticket: Ticket, tokens: int, cost: int) -> None:
        if ticket.verdict.backend == "redis":
            if self.shared is not None and self.shared.up:
                self.shared.limiter.settle(ticket, tokens, cost)
        else:
            self.local.settle(ticket, tokens, cost)


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

    Blocking (runs in the store pool). Values are lower bounds of the truth (events still in a
    replica's ledger buffer are not in the store yet), so callers only ever raise counters to them.
    """
    totals: dict[str, tuple[int, float]] = {}
    for name in BUDGETS:
        scale = MICROS if name.startswith("cost") else 1
        for group in ("user", "key"):
            period, end, spent = budget_spend(store, name, group, free_models, now)
            for who, value in spent.items():
                totals[f"{group}:{who}:{KIND_OF[name]}:{period}"] = (round(value * scale), end)
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
