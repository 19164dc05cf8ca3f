"""Rate limits and quotas: which limits bind a call, what it reserves, and how a refusal reads.

A call is checked against three subjects: its key, its user (all the user's keys together) and,
where a model sets limits, the user on that model. Each limit is the configured default overlaid
with the subject's own override. The call reserves an upper estimate up front (prompt bytes and
`max_tokens`), and settles to the real usage afterwards, so concurrent calls cannot overshoot a
budget between them. The counters live in a `Limiter`: in-process or shared through Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from ..catalog.endpoints import Endpoint
from ..config import LIMIT_NAMES
from ..errors import GatewayError
from ..relay.requestbody import RequestBody

BUDGET_KINDS = frozenset(("cost_d", "cost_w", "tok_d", "tok_w"))
KIND_OF = {
    "requests_per_minute": "rpm", "tokens_per_minute": "tpm", "concurrent_requests": "conc",
    "cost_per_day": "cost_d", "cost_per_week": "cost_w", "tokens_per_day": "tok_d", "tokens_per_week": "tok_w",
}
WINDOW_SECONDS = 60
MICROS = 1_000_000
DAY = 86400
WEEK_OFFSET_DAYS = 3  # 1970-01-01 was a Thursday; weeks start on Monday, UTC


@dataclass(frozen=True)
class Check:
    """One limit on one subject, and what this call asks of it (requests, tokens or micro-cost)."""

    subject: str
    name: str
    limit: int
    amount: int
    period: str = ""
    period_end: float = 0.0

    @property
    def kind(self) -> str:
        return KIND_OF[self.name]

    @property
    def counter(self) -> str:
        """The counter's name, the same in every backend and replica."""
        return f"{self.subject}:{self.kind}:{self.period}" if self.period else f"{self.subject}:{self.kind}"


@dataclass
class Verdict:
    """The limiter's answer: per check, what is used (counting this call if admitted) and when it resets."""

    allowed: bool
    used: list[int]
    resets: list[float]
    refused: int = -1
    retry_after: float = 0.0
    second: int = 0
    backend: str = ""


@dataclass
class Ticket:
    """What an admitted call holds until it settles."""

    request_id: str
    checks: list[Check]
    verdict: Verdict
    free_model: bool
    settled: bool = False
    held: bool = False
    """Its budgets are held in the store (admitted while Redis was away, or open when it went)."""
    headers: list[tuple[str, str]] = field(default_factory=list)


class Limiter(Protocol):
    name: str

    async def admit(self, checks: list[Check], request_id: str, lease: float) -> Verdict:
        """Check every limit and, only if all pass, apply every reservation: atomically."""

    def settle(self, ticket: Ticket, tokens: int, cost_micros: int) -> None:
        """Replace the ticket's reservations with the real usage and free its concurrency slot."""

    async def renew(self, slots: list[tuple[str, str]], lease: float) -> int:
        """Extend the lease of these (counter, request id) slots that are still held; how many were."""


def period_of(name: str, now: float) -> tuple[str, float]:
    """The calendar period (UTC day, or week from Monday) a budget counts in, and when it ends."""
    day = int(now // DAY)
    if name.endswith("_per_day"):
        return f"d{day}", (day + 1) * DAY
    week = (day + WEEK_OFFSET_DAYS) // 7
    return f"w{week}", ((week + 1) * 7 - WEEK_OFFSET_DAYS) * DAY


def period_end(period: str) -> float:
    """When a period named by `period_of` ("d<day>" or "w<week>") ends."""
    number = int(period[1:])
    return (number + 1) * DAY if period[0] == "d" else ((number + 1) * 7 - WEEK_OFFSET_DAYS) * DAY


def merged(defaults: dict[str, float], override: dict[str, float]) -> dict[str, float]:
    """Defaults overlaid with a subject's own limits; 0 means no limit."""
    out = dict(defaults)
    out.update({k: v for k, v in override.items() if k in LIMIT_NAMES})
    return {k: v for k, v in out.items() if v}


def reservation(endpoint: Endpoint, body: RequestBody, bytes_per_token: float,
                default_max_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens to reserve: an upper estimate of the prompt, the most the completion may take.

    The prompt is measured as the bytes of its JSON, which the body's read has at hand: at least
    the UTF-8 bytes of its text, plus the quotes, brackets and member names around each item. With
    `bytes_per_token` = 1 the estimate cannot fall short (a byte-level BPE token covers at least
    one byte, and a message's JSON carries more bytes than its chat template adds tokens).
    """
    prompt = math.ceil(body.prompt_size(endpoint.prompt_field) / bytes_per_token) + 16
    if not endpoint.completes:
        return prompt, 0
    most = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    choices = body.get("n") or 1
    return prompt, int(most) * int(choices)


def cost_micros(prompt: int, completion: int, prompt_per_1k: float, completion_per_1k: float) -> int:
    return math.ceil((prompt * prompt_per_1k + completion * completion_per_1k) / 1000 * MICROS - 1e-6)


def build_checks(
    subjects: list[tuple[str, dict[str, float]]], tokens: int, cost: int, free_model: bool, now: float
) -> list[Check]:
    """The checks for one call; token budgets count only free models (cost budgets cover the rest)."""
    checks = []
    for subject, limits in subjects:
        for name, value in limits.items():
            if name in ("tokens_per_day", "tokens_per_week") and not free_model:
                continue
            if name.startswith("cost_"):
                limit, amount = round(value * MICROS), cost
            else:
                limit = int(value)
                amount = 1 if name in ("requests_per_minute", "concurrent_requests") else tokens
            period, end = period_of(name, now) if name.endswith(("_per_day", "_per_week")) else ("", 0.0)
            checks.append(Check(subject, name, limit, amount, period, end))
    return checks


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def rate_headers(checks: list[Check], verdict: Verdict) -> list[tuple[str, str]]:
    """x-ratelimit-limit/remaining/reset for requests and tokens: the tightest subject of each."""
    headers = []
    for name, label in (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens")):
        tightest = None
        for i, check in enumerate(checks):
            if check.name == name:
                remaining = max(0, check.limit - verdict.used[i])
                if tightest is None or remaining < tightest[1]:
                    tightest = (check, remaining, verdict.resets[i])
        if tightest is not None:
            check, remaining, reset = tightest
            headers += [
                (f"x-ratelimit-limit-{label}", str(check.limit)),
                (f"x-ratelimit-remaining-{label}", str(remaining)),
                (f"x-ratelimit-reset-{label}", duration(reset)),
            ]
    return headers


def refusal(checks: list[Check], verdict: Verdict) -> GatewayError:
    """The 429 for a refused call, worded as OpenAI words it."""
    check = checks[verdict.refused]
    used = verdict.used[verdict.refused]
    wait = duration(verdict.retry_after)
    who = check.subject.replace(":", " ", 1)
    if check.name.startswith(("cost_", "tokens_per_")):
        period = "day" if check.name.endswith("day") else "week"
        unit = "cost" if check.name.startswith("cost_") else "tokens"
        shown = (lambda v: f"{v / MICROS:.4f}") if unit == "cost" else str
        err = GatewayError(
            429,
            f"You exceeded the {unit} budget per {period} of {who}: limit {shown(check.limit)}, used {shown(used)}, "
            f"this request reserves up to {shown(check.amount)}. The budget renews in {wait}.",
            "insufficient_quota", "insufficient_quota",
        )
    else:
        label = {"requests_per_minute": "requests per minute (RPM)", "tokens_per_minute": "tokens per minute (TPM)",
                 "concurrent_requests": "concurrent requests"}[check.name]
        err = GatewayError(
            429,
            f"Rate limit reached for {label} on {who}: limit {check.limit}, used {used}, requested {check.amount}. "
            f"Please try again in {wait}.",
            "tokens" if check.name == "tokens_per_minute" else "requests", "rate_limit_exceeded",
        )
    err.headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
    for name, value in rate_headers(checks, verdict):
        err.headers[name] = value
    return err
