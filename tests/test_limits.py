"""The limit rules, the same on both counters: in-process, and shared through a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from llmgateway.catalog.endpoints import CHAT, COMPLETIONS, EMBEDDINGS
from llmgateway.config import ConfigError, parse_config
from llmgateway.limits.local import LocalLimiter
from llmgateway.limits.redis import RedisLimiter
from llmgateway.limits.rules import (
    DAY,
    MICROS,
    Check,
    Limiter,
    Ticket,
    Verdict,
    build_checks,
    duration,
    period_of,
    rate_headers,
    refusal,
    reservation,
)
from llmgateway.relay.requestbody import RequestBody, read_body
from tests.conftest import RedisServer

Scenario = Callable[[Limiter], Awaitable[None]]


@pytest.fixture(params=["local", "redis"])
def run_with(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Run a scenario against a fresh limiter of each kind."""

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            if request.param == "local":
                await scenario(LocalLimiter())
                return
            server: RedisServer = request.getfixturevalue("redis_server")
            client = Redis.from_url(server.url)
            try:
                await scenario(RedisLimiter(client))
            finally:
                await client.aclose()

        asyncio.run(main())

    return run


def check(name: str, limit: int, amount: int = 1, subject: str = "key:k1") -> Check:
    period, end = period_of(name, time.time()) if name.endswith(("_day", "_week")) else ("", 0.0)
    return Check(subject, name, limit, amount, period, end)


async def drain(limiter: Limiter) -> None:
    """Let a Redis limiter send its queued settlements."""
    if isinstance(limiter, RedisLimiter):
        for _ in range(100):
            if not limiter._queue and limiter._timer is None:
                return
            await asyncio.sleep(0.01)


def test_requests_per_minute_admits_exactly_the_limit(run_with: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: Limiter) -> None:
        checks = [check("requests_per_minute", 3)]
        verdicts = [await limiter.admit(checks, f"r{i}", 60) for i in range(5)]
        assert [v.allowed for v in verdicts] == [True, True, True, False, False]
        assert verdicts[2].used == [3]
        assert 0 < verdicts[3].retry_after <= 60
        assert 0 < verdicts[0].resets[0] <= 60

    run_with(scenario)


def test_tokens_reserved_then_settled_to_real_usage(run_with: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: Limiter) -> None:
        checks = [check("tokens_per_minute", 100, amount=60)]
        first = await limiter.admit(checks, "r1", 60)
        assert first.allowed
        assert not (await limiter.admit(checks, "r2", 60)).allowed, "60 + 60 reserved exceeds 100"
        limiter.settle(Ticket("r1", checks, first, True), 30, 0)
        await drain(limiter)
        third = await limiter.admit(checks, "r3", 60)
        assert third.allowed and third.used == [90], "the reservation of 60 was replaced by the 30 really used"

    run_with(scenario)


def test_concurrency_slot_freed_by_settlement_or_lease(run_with: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: Limiter) -> None:
        checks = [check("concurrent_requests", 2)]
        a = await limiter.admit(checks, "a", 60)
        assert a.allowed and (await limiter.admit(checks, "b", 0.3)).allowed
        assert not (await limiter.admit(checks, "c", 60)).allowed
        limiter.settle(Ticket("a", checks, a, True), 10, 0)
        await drain(limiter)
        assert (await limiter.admit(checks, "d", 60)).allowed
        deadline = time.monotonic() + 5
        while not (await limiter.admit(checks, "e", 60)).allowed:
            assert time.monotonic() < deadline, "slot b's lease never expired"
            await asyncio.sleep(0.05)

    run_with(scenario)


def test_renewed_slots_outlive_their_lease_and_others_expire(run_with: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: Limiter) -> None:
        checks = [check("concurrent_requests", 2)]
        assert (await limiter.admit(checks, "kept", 0.5)).allowed
        assert (await limiter.admit(checks, "lost", 0.5)).allowed
        counter = checks[0].counter
        deadline = time.monotonic() + 5
        while not (await limiter.admit(checks, "new", 60)).allowed:
            assert await limiter.renew([(counter, "kept"), (counter, "gone")], 0.5) == 1, "only held slots renew"
            assert time.monotonic() < deadline, "the slot nobody renewed never expired"
            await asyncio.sleep(0.1)
        assert not (await limiter.admit(checks, "more", 60)).allowed, "the renewed slot is still held"

    run_with(scenario)


def test_budget_refuses_what_would_overshoot_and_checks_are_all_or_nothing(
    run_with: Callable[[Scenario], None],
) -> None:
    async def scenario(limiter: Limiter) -> None:
        budget = check("cost_per_day", 1_000, amount=400, subject="user:alice")
        rpm = check("requests_per_minute", 100)
        verdicts = [await limiter.admit([rpm, budget], f"r{i}", 60) for i in range(3)]
        assert [v.allowed for v in verdicts] == [True, True, False]
        assert verdicts[2].refused == 1 and verdicts[2].used == [2, 800]
        assert verdicts[2].retry_after == pytest.approx(budget.period_end - time.time(), abs=2)
        fourth = await limiter.admit([rpm], "r4", 60)
        assert fourth.used == [3], "the refused call took nothing from the request window"

    run_with(scenario)


def test_settlement_never_takes_a_budget_below_zero(run_with: Callable[[Scenario], None]) -> None:
    async def scenario(limiter: Limiter) -> None:
        checks = [check("tokens_per_day", 1_000, amount=100)]
        verdict = await limiter.admit(checks, "r1", 60)
        limiter.settle(Ticket("r1", checks, verdict, True), 0, 0)
        await drain(limiter)
        again = await limiter.admit(checks, "r2", 60)
        assert again.used == [100]

    run_with(scenario)


def test_settlements_ride_on_the_next_admission_or_go_alone(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        limiter = RedisLimiter(client)
        checks = [check("concurrent_requests", 1)]
        first = await limiter.admit(checks, "a", 60)
        limiter.settle(Ticket("a", checks, first, True), 1, 0)
        assert limiter._queue, "queued, not sent yet"
        assert (await limiter.admit(checks, "b", 60)).allowed, "the admission carried the release first"
        assert not limiter._queue and limiter._timer is None
        limiter.settle(Ticket("b", checks, first, True), 1, 0)
        await drain(limiter)
        assert await client.zcard("llmgw:lim:" + checks[0].counter) == 0, "sent alone after the delay"
        await client.aclose()

    asyncio.run(main())


def test_admissions_survive_a_script_flush_singly_and_batched(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        limiter = RedisLimiter(client)
        checks = [check("requests_per_minute", 6)]
        await client.script_flush()
        assert (await limiter.admit(checks, "alone", 60)).allowed
        await client.script_flush()
        verdicts = await asyncio.gather(*(limiter.admit(checks, f"r{i}", 60) for i in range(8)))
        assert sorted(v.used[0] for v in verdicts if v.allowed) == [2, 3, 4, 5, 6]
        await client.aclose()

    asyncio.run(main())


def test_redis_seed_only_raises_counters(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        limiter = RedisLimiter(client)
        budget = check("cost_per_week", 1_000, amount=100)
        await limiter.admit([budget], "r1", 60)
        await limiter.seed({budget.counter: (50, budget.period_end)})
        assert (await limiter.admit([budget], "r2", 60)).used == [200], "a lower store figure leaves it alone"
        await limiter.seed({budget.counter: (950, budget.period_end)})
        refused = await limiter.admit([budget], "r3", 60)
        assert not refused.allowed and refused.used == [950]
        await client.aclose()

    asyncio.run(main())


def test_concurrent_admissions_on_two_connections_never_exceed_the_limit(redis_server: RedisServer) -> None:
    async def main() -> None:
        clients = [Redis.from_url(redis_server.url) for _ in range(2)]
        limiters = [RedisLimiter(c) for c in clients]
        checks = [check("requests_per_minute", 25)]
        verdicts = await asyncio.gather(*(limiters[i % 2].admit(checks, f"r{i}", 60) for i in range(80)))
        assert sum(v.allowed for v in verdicts) == 25
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def read(body: dict, ensure_ascii: bool = True) -> RequestBody:
    return read_body(json.dumps(body, ensure_ascii=ensure_ascii).encode())


def test_reservation_is_an_upper_bound_of_prompt_and_completion() -> None:
    text = "héllo wörld"
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 7, "n": 2}
    for ensure_ascii in (True, False):
        prompt, completion = reservation(CHAT, read(body, ensure_ascii), 1.0, 1024)
        assert prompt >= len(text.encode()) + 16 and completion == 14
    assert reservation(COMPLETIONS, read({"prompt": "abc"}), 1.0, 50)[1] == 50
    assert reservation(EMBEDDINGS, read({"input": ["a", "b"]}), 1.0, 50)[1] == 0
    assert reservation(CHAT, read(body), 4.0, 1024)[0] < prompt


def test_token_budgets_apply_only_to_free_models() -> None:
    limits = [("user:a", {"tokens_per_day": 100.0, "cost_per_day": 2.0})]
    paid = build_checks(limits, 10, 5_000, free_model=False, now=time.time())
    free = build_checks(limits, 10, 0, free_model=True, now=time.time())
    assert [c.name for c in paid] == ["cost_per_day"]
    assert paid[0].limit == 2 * MICROS and paid[0].amount == 5_000
    assert sorted(c.name for c in free) == ["cost_per_day", "tokens_per_day"]


def test_periods_are_utc_days_and_weeks_from_monday() -> None:
    monday_noon = 1_794_787_200.0 + 12 * 3600  # 2026-11-16 is a Monday
    assert period_of("cost_per_day", monday_noon)[1] == 1_794_787_200.0 + 86400
    assert period_of("cost_per_week", monday_noon)[1] == 1_794_787_200.0 + 7 * 86400
    assert period_of("cost_per_week", 1_794_787_200.0 - 1)[1] == 1_794_787_200.0


def test_refusal_reads_as_openai_and_carries_the_headers() -> None:
    checks = [check("requests_per_minute", 3), check("tokens_per_minute", 500, amount=40)]
    verdict = Verdict(False, [3, 120], [12.5, 30.0], refused=0, retry_after=4.2)
    err = refusal(checks, verdict)
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.headers["Retry-After"] == "5"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-remaining-tokens"] == "380"
    assert err.headers["x-ratelimit-reset-requests"] == "12.5s"
    budget = check("cost_per_day", 1_000_000, amount=2_000, subject="user:bob")
    quota = refusal([budget], Verdict(False, [999_000], [3600.0], refused=0, retry_after=3600))
    assert quota.code == "insufficient_quota" and quota.type == "insufficient_quota"
    assert "user bob" in quota.message and "Retry-After" in quota.headers
    assert rate_headers([budget], Verdict(True, [0], [0.0])) == []
    assert [duration(0.02), duration(1), duration(360)] == ["20ms", "1s", "6m0s"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"limits": {"key": {"requests_per_hour": 1}}}, "limits.key.requests_per_hour is not a known setting"),
        ({"limits": {"user": {"cost_per_day": -1}}}, "limits.user.cost_per_day"),
        ({"limits": {"prompt_bytes_per_token": 0.5}}, "limits.prompt_bytes_per_token"),
        ({"limits": {"concurrency_lease_seconds": 1}}, "limits.concurrency_lease_seconds: 1.0 must be >= 3"),
        ({"limits": {"concurrency_lease_seconds": "soon"}}, "limits.concurrency_lease_seconds"),
        ({"redis": {"url": "http://localhost"}}, "redis.url"),
        ({"redis": {"on_failure": "ignore"}}, "redis.on_failure"),
        ({"jobs": {"retention_days": 7}}, "jobs.retention_days"),
        ({"models": [{"id": "m", "upstreams": ["http://x"], "limits": {"cost_per_day": 1}}]}, "limits.cost_per_day"),
    ],
)
def test_bad_limit_settings_name_the_setting(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(raw)


def test_local_counters_are_forgotten_after_their_period() -> None:
    """The in-process limiter keeps counters of active subjects only: a flood of one-off subjects
    leaves nothing behind once their minute, day and week are over."""
    now = [12 * DAY + 5.0]  # a Tuesday: its week goes on after its day
    limiter = LocalLimiter(clock=lambda: now[0])
    for i in range(1000):
        day, day_end = period_of("cost_per_day", now[0])
        week, week_end = period_of("cost_per_week", now[0])
        checks = [Check(f"user:u{i}", "cost_per_day", 100, 1, day, day_end),
                  Check(f"user:u{i}", "cost_per_week", 100, 1, week, week_end),
                  Check(f"user:u{i}", "requests_per_minute", 10, 1),
                  Check(f"user:u{i}", "concurrent_requests", 5, 1)]
        assert limiter.admit_now(checks, f"r{i}", 900).allowed
    assert len(limiter.totals) == 2000 and len(limiter.windows) == len(limiter.slots) == 1000
    now[0] += 120
    limiter.admit_now([], "tick", 900)
    assert len(limiter.totals) == 2000 and not limiter.windows and len(limiter.slots) == 1000
    now[0] = day_end + 1
    limiter.admit_now([], "tick", 900)
    assert len(limiter.totals) == 1000 and not limiter.slots, "the day's budgets and the lapsed leases are gone"
    now[0] = week_end + 1
    limiter.admit_now([], "tick", 900)
    assert limiter.totals == {}
