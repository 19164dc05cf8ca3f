"""The scheduler's jobs on a real SQLite store: failures survive, replicas share the work, retention."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from llmgateway.config import parse_config
from llmgateway.gateway import Gateway
from llmgateway.jobs import guarded, retention, rollups
from llmgateway.records import UsageEvent
from llmgateway.scheduler import make_scheduler
from llmgateway.store import open_store


def event(rid: str, ts: float, user: str = "u") -> UsageEvent:
    return UsageEvent(ts=ts, request_id=rid, key_id="k", user=user, model="m", prompt_tokens=3,
                      completion_tokens=4, cost=0.5, status=200, latency_ms=1.0, streamed=False, estimated=False)


def with_gateway(tmp_path: Path, raw: dict, scenario: Callable[[Gateway], Awaitable[None]]) -> None:
    async def main() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
        store.init()
        gateway = Gateway(parse_config({"usage": {"spool_dir": str(tmp_path / "spool")}, **raw}), store)
        try:
            await scenario(gateway)
        finally:
            await gateway.stop_shared()
            gateway.close()

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


def test_jobs_never_overlap_themselves_and_merge_missed_runs(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        scheduler = make_scheduler(gateway, asyncio.get_running_loop())
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert set(jobs) == {"usage-flush", "log-flush", "rollups", "retention"}, "no reconcile job without Redis"
        assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())

    with_gateway(tmp_path, {}, scenario)


def test_one_replica_rolls_up_per_run_and_the_rows_equal_the_raw_events(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        now = time.time()
        gateway.store.insert_usage([event(f"r{i}", now - i * 1800, user=f"u{i % 2}") for i in range(4)])
        config = gateway.config.jobs
        assert await rollups(gateway, config, holder="replica-a") > 0
        assert await rollups(gateway, config, holder="replica-b") == 0, "the lease holds the other replica off"
        assert await rollups(gateway, config, holder="replica-a") > 0, "the holder renews and rebuilds"
        for bucket in ("hour", "day"):
            rows = gateway.store.usage_rollups(bucket, now - 3 * 86400)
            assert sum(r["requests"] for r in rows) == 4
            assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == 28
            assert sum(r["cost"] for r in rows) == pytest.approx(2.0)

    with_gateway(tmp_path, {"jobs": {"rollup_interval_seconds": 60}}, scenario)


def test_retention_drops_only_events_past_the_limit(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        now = time.time()
        gateway.store.insert_usage([event("old", now - 40 * 86400), event("new", now - 20 * 86400)])
        assert await retention(gateway, gateway.config.jobs, holder="a") == 1
        assert [e.request_id for e in gateway.store.usage_events()] == ["new"]

    with_gateway(tmp_path, {"jobs": {"retention_days": 31}}, scenario)


def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    async def scenario(gateway: Gateway) -> None:
        gateway.store.insert_usage([event("ancient", 1_000.0)])
        assert await retention(gateway, gateway.config.jobs, holder="a") == 0
        assert gateway.store.count_usage() == 1

    with_gateway(tmp_path, {"jobs": {"retention_days": 0}}, scenario)
