"""The scheduler's jobs and the gateway's store-side bookkeeping, on every store backend.

Failures survive, replicas share the work, retention keeps what it should, and what the limits
read back from the store (spend, owners' limits) comes out the same on SQLite and MongoDB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from llmgateway.auth.keys import make_record
from llmgateway.config import parse_config
from llmgateway.gateway import Gateway
from llmgateway.limits.admission import spent_in_store
from llmgateway.limits.rules import period_of
from llmgateway.ops.scheduler import guarded, make_scheduler
from llmgateway.records import UsageEvent
from llmgateway.store import Store
from llmgateway.usage.rollups import retention, rollups
from tests import store_inspect
from tests.backends import BACKENDS, open_backend


def event(rid: str, ts: float, user: str = "u") -> UsageEvent:
    return UsageEvent(ts=ts, request_id=rid, key_id="k", user=user, model="m", prompt_tokens=3,
                      completion_tokens=4, cost=0.5, status=200, latency_ms=1.0, streamed=False, estimated=False)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    for backend in open_backend(request.param, tmp_path, monkeypatch):
        yield backend.store


def with_gateway(store: Store, tmp_path: Path, raw: dict, scenario: Callable[[Gateway], Awaitable[None]]) -> None:
    """Run `scenario` with an in-process Gateway on `store` (the fixture closes the store)."""

    async def main() -> None:
        gateway = Gateway(parse_config({"usage": {"spool_dir": str(tmp_path / "spool")}, **raw}), store)
        try:
            await scenario(gateway)
        finally:
            await gateway.stop_shared()
            gateway.upstream.close()
            gateway.executor.shutdown(wait=True)

    asyncio.run(main())


def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    runs = []

    async def broken() -> None:
        runs.append(1)
        raise RuntimeError("store on fire")

    job = guarded("rollups", broken)
    asyncio.run(job())
    asyncio.run(job())
    assert len(runs) == 2
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "job rollups failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None


def test_jobs_never_overlap_themselves_and_merge_missed_runs(store: Store, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        scheduler = make_scheduler(gateway, asyncio.get_running_loop())
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert set(jobs) == {"usage-flush", "log-flush", "journal-progress", "slot-leases", "rollups", "retention",
                             "models"}, \
            "no reconcile job without Redis"
        assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())

    with_gateway(store, tmp_path, {}, scenario)


def test_one_replica_rolls_up_per_run_and_the_rows_equal_the_raw_events(store: Store, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        now = time.time()
        gateway.store.insert_usage([event(f"r{i}", now - i * 1800, user=f"u{i % 2}") for i in range(4)])
        config = gateway.config.jobs
        assert await rollups(gateway, config, holder="replica-a") > 0
        assert await rollups(gateway, config, holder="replica-b") == 0, "the lease holds the other replica off"
        assert await rollups(gateway, config, holder="replica-a") > 0, "the holder renews and rebuilds"
        for bucket in ("hour", "day"):
            rows = store_inspect.usage_rollups(gateway.store, bucket, now - 3 * 86400)
            assert sum(r["requests"] for r in rows) == 4
            assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == 28
            assert sum(r["cost"] for r in rows) == pytest.approx(2.0)

    with_gateway(store, tmp_path, {"jobs": {"rollup_interval_seconds": 60}}, scenario)


def test_retention_drops_only_events_past_the_limit(store: Store, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        now = time.time()
        gateway.store.insert_usage([event("old", now - 40 * 86400), event("new", now - 20 * 86400)])
        assert await retention(gateway, gateway.config.jobs, holder="a") == 1
        assert [e.request_id for e in store_inspect.usage_events(gateway.store)] == ["new"]

    with_gateway(store, tmp_path, {"jobs": {"retention_days": 31}}, scenario)


def test_retention_zero_keeps_everything(store: Store, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        gateway.store.insert_usage([event("ancient", 1_000.0)])
        assert await retention(gateway, gateway.config.jobs, holder="a") == 0
        assert store_inspect.count_usage(gateway.store) == 1

    with_gateway(store, tmp_path, {"jobs": {"retention_days": 0}}, scenario)


def test_limits_read_the_same_spend_and_owner_limits_back(store: Store, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        key, record = make_record("dana", "laptop")
        gateway.store.insert_key(record)
        gateway.store.set_user_limits("dana", {"cost_per_day": 3.0})
        found, owner_limits = await gateway.authenticate(f"Bearer {key}")
        assert found.id == record.id and owner_limits == {"cost_per_day": 3.0}
        now = time.time()
        gateway.store.insert_usage([
            event("a", now - 60, user="dana"),
            UsageEvent(ts=now - 30, request_id="b", key_id=record.id, user="dana", model="free", prompt_tokens=10,
                       completion_tokens=20, cost=0.0, status=200, latency_ms=1.0, streamed=False, estimated=False),
            event("old", now - 8 * 86400, user="dana"),
        ])
        totals = spent_in_store(gateway.store, ["free"], now)
        day, _ = period_of("cost_per_day", now)
        week, _ = period_of("tokens_per_week", now)
        assert totals[f"user:dana:cost_d:{day}"][0] == 500_000
        assert totals[f"user:dana:tok_w:{week}"][0] == 30, "token budgets count only the free model"
        assert totals[f"key:{record.id}:tok_w:{week}"][0] == 30
        quota = await gateway.quota("dana", owner_limits)
        assert quota is not None and quota["budgets"][0]["spent"] == pytest.approx(0.5)
        assert quota["budgets"][0]["remaining"] == pytest.approx(2.5)

    with_gateway(store, tmp_path, {"models": [{"id": "free", "upstreams": ["http://127.0.0.1:9"]}]}, scenario)
