"""Several real gateway processes sharing one store and a real redis-server, as replicas do.

Limits must hold exactly across replicas, a revocation must reach every replica within a second,
and Redis may die and come back mid-load without a hung request or a lost usage event.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tests.conftest import (
    GatewayProcess,
    MockUpstream,
    RedisServer,
    free_port,
    http_json,
    model_toml,
    wait_for,
)

# Each call asks for 10 completion tokens at 1.0 per 1k: it costs (and reserves) exactly 0.01.
PRICED = {"completion_cost_per_1k": 1.0, "prompt_cost_per_1k": 0.0}
CALL = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def post(gw: GatewayProcess, key: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict, Any]:
    """One chat call: (status, headers, JSON body); never raises for an HTTP error."""
    req = urllib.request.Request(
        gw.url + "/v1/chat/completions", data=json.dumps(body or CALL).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read() or b"null")


def replicas(start_gateway: Callable[..., GatewayProcess], mock: MockUpstream, tmp_path: Path, extra: str,
             count: int = 2) -> list[GatewayProcess]:
    store = tmp_path / "shared.db"
    models = model_toml("m", [mock.url], **PRICED)
    return [start_gateway(models, extra, store_path=store) for _ in range(count)]


def burst(calls: list[Callable[[], tuple[int, dict, Any]]]) -> list[tuple[int, dict, Any]]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda f: f(), calls))


def spent(db: Path) -> float:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT coalesce(sum(cost), 0) FROM usage_events").fetchone()[0]
    finally:
        conn.close()


def test_two_replicas_admit_exactly_the_rate_limit(start_mock, start_gateway, redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    mock = start_mock("--latency-ms", "50")
    gws = replicas(start_gateway, mock, tmp_path,
                   f'[redis]\nurl = "{redis_server.url}"\n[limits.key]\nrequests_per_minute = 10\n')
    key = gws[0].create_key()
    results = burst([lambda i=i: post(gws[i % 2], key) for i in range(40)])
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 30
    admitted = [h for s, h, _ in results if s == 200]
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in admitted) == list(range(10))
    assert all(h["x-ratelimit-limit-requests"] == "10" for h in admitted)
    status, headers, body = next(r for r in results if r[0] == 429)
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert "requests per minute" in body["error"]["message"]
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert len(gws[0].wait_events(10)) == 10, "only admitted calls reach the usage ledger"


def test_revocation_reaches_the_other_replica_within_a_second(start_mock, start_gateway, redis_server: RedisServer,
                                                              tmp_path: Path) -> None:
    mock = start_mock()
    gws = replicas(start_gateway, mock, tmp_path, f'[redis]\nurl = "{redis_server.url}"\n'
                   "[keys]\ncache_ttl_seconds = 300\n")
    key = gws[0].create_key()
    for gw in gws:
        assert post(gw, key)[0] == 200, "both replicas have the key cached"
    key_id = json.loads(gws[0].cli("keys", "list", "--json").stdout)[0]["id"]
    gws[0].cli("keys", "revoke", key_id)
    revoked_at = time.monotonic()
    wait_for(lambda: post(gws[1], key)[0] == 401, timeout=1.0, interval=0.02, what="replica 2 refusing")
    assert time.monotonic() - revoked_at < 1.0
    status, _, body = post(gws[0], key)
    assert status == 401 and body["error"]["code"] == "revoked_api_key"


def test_budget_never_overshoots_and_recovers_after_redis_restart(start_mock, start_gateway,
                                                                   redis_server: RedisServer, tmp_path: Path) -> None:
    mock = start_mock("--latency-ms", "30")
    gws = replicas(start_gateway, mock, tmp_path,
                   f'[redis]\nurl = "{redis_server.url}"\nreconcile_interval_seconds = 1\n'
                   "[limits.user]\ncost_per_day = 0.05\n")
    key = gws[0].create_key()
    results = burst([lambda i=i: post(gws[i % 2], key) for i in range(30)])
    assert [r[0] for r in results].count(200) == 5
    refused = next(r for r in results if r[0] == 429)
    assert refused[2]["error"]["code"] == "insufficient_quota" and "retry-after" in refused[1]
    gws[0].wait_events(5)
    assert spent(tmp_path / "shared.db") <= 0.05 + 1e-9

    redis_server.kill()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: client.exists("llmgw:epoch"), timeout=10, what="reconciliation after the Redis restart")
    client.close()
    for gw in gws:
        status, _, body = post(gw, key)
        assert status == 429 and body["error"]["code"] == "insufficient_quota", "the budget survived the flush"


def test_redis_killed_mid_load_loses_nothing_and_hangs_nothing(start_mock, start_gateway,
                                                                redis_server: RedisServer, tmp_path: Path) -> None:
    mock = start_mock("--latency-ms", "5")
    gws = replicas(start_gateway, mock, tmp_path,
                   f'[redis]\nurl = "{redis_server.url}"\nreconcile_interval_seconds = 1\n'
                   "[limits.key]\nrequests_per_minute = 100000\n")
    key = gws[0].create_key()
    done: list[tuple[int, float]] = []

    def call(i: int) -> None:
        started = time.monotonic()
        done.append((post(gws[i % 2], key, timeout=15)[0], time.monotonic() - started))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, i) for i in range(240)]
        wait_for(lambda: len(done) >= 60, timeout=30, what="load under way")
        redis_server.kill()
        wait_for(lambda: len(done) >= 140, timeout=30, what="load while Redis is down")
        redis_server.start()
        for f in futures:
            f.result(timeout=60)
    assert [s for s, _ in done] == [200] * 240, "the local fallback admits while Redis is away"
    assert max(t for _, t in done) < 5, "no call waited on the dead Redis"
    assert len(gws[0].wait_events(240)) == 240
    for gw in gws:
        wait_for(lambda gw=gw: "Redis is reachable again" in gw.log(), timeout=10, what="reconnect")
        assert gw.log().count("Redis is unavailable") == 1, "one warning per outage"
    assert post(gws[1], key)[0] == 200


def test_refuse_policy_answers_503_until_redis_returns(start_mock, start_gateway, tmp_path: Path) -> None:
    down = RedisServer(tmp_path, free_port())
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url], **PRICED),
                       f'[redis]\nurl = "{down.url}"\non_failure = "refuse"\n[limits.key]\nrequests_per_minute = 50\n')
    key = gw.create_key()
    status, headers, body = post(gw, key)
    assert status == 503 and body["error"]["code"] == "limits_unavailable" and headers["retry-after"] == "1"
    status, ready = http_json("GET", gw.url + "/readyz")
    assert (status, ready["status"], ready["redis"]) == (200, "ready", "down")
    down.start()
    try:
        wait_for(lambda: post(gw, key)[0] == 200, timeout=10, what="admission once Redis is up")
        assert http_json("GET", gw.url + "/readyz")[1]["redis"] == "up"
    finally:
        down.kill()


def test_without_redis_limits_are_exact_in_one_process_and_survive_a_restart(start_mock, start_gateway) -> None:
    mock = start_mock("--latency-ms", "30")
    gw = start_gateway(model_toml("m", [mock.url], **PRICED),
                       "[limits.key]\nrequests_per_minute = 8\n[limits.user]\ncost_per_day = 0.04\n")
    key = gw.create_key()
    results = burst([lambda: post(gw, key) for _ in range(20)])
    assert [r[0] for r in results].count(200) == 4, "the budget (4 calls) binds before the 8 requests a minute"
    gw.wait_events(4)
    ready = http_json("GET", gw.url + "/readyz")[1]
    assert (ready["status"], ready["redis"]) == ("ready", "off")
    gw.stop()
    gw.start()
    status, _, body = post(gw, key)
    assert status == 429 and body["error"]["code"] == "insufficient_quota"


def test_rollups_equal_the_sum_of_raw_events(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url], **PRICED), "[jobs]\nrollup_interval_seconds = 1\n")
    keys = [gw.create_key(user) for user in ("ann", "bob")]
    for i in range(6):
        assert post(gw, keys[i % 2])[0] == 200
    gw.wait_events(6)

    def rollups_match() -> bool:
        conn = sqlite3.connect(gw.db_path, timeout=10)
        try:
            raw = conn.execute("SELECT user, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost) "
                               "FROM usage_events GROUP BY user ORDER BY user").fetchall()
            rolled = [
                conn.execute(f"SELECT user, sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(cost) "
                             f"FROM usage_rollups WHERE bucket = '{bucket}' GROUP BY user ORDER BY user").fetchall()
                for bucket in ("hour", "day")
            ]
        finally:
            conn.close()
        return len(raw) == 2 and all(r == raw for r in rolled)

    wait_for(rollups_match, timeout=10, interval=0.2, what="hour and day rollups equal to the raw events")
