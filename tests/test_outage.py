"""Limits that hold when a part dies: Redis killed under load, a replica killed holding slots.

Real processes on loopback, as in test_replicas.py: two gateways sharing one SQLite store and a
real redis-server, the mock upstream, clients in threads.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

from tests.conftest import GatewayProcess, RedisServer, model_toml, wait_for
from tests.test_replicas import PRICED, post, spent

CALL_COST = 0.01  # test_replicas.CALL: 10 completion tokens at 1.0 per 1k, reserved and spent alike


def test_budget_holds_through_a_redis_kill_under_100_clients(start_mock, start_gateway, redis_server: RedisServer,
                                                             tmp_path: Path) -> None:
    """README: while Redis is away each replica overspends a budget by at most one reservation."""
    budget = 1.0
    mock = start_mock("--latency-ms", "30")
    store = tmp_path / "shared.db"
    extra = f'[redis]\nurl = "{redis_server.url}"\non_failure = "local"\n[limits.user]\ncost_per_day = {budget}\n'
    gws = [start_gateway(model_toml("m", [mock.url], **PRICED), extra, store_path=store) for _ in range(2)]
    key = gws[0].create_key()
    statuses: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            status = post(gws[i % 2], key, timeout=20)[0]
            with lock:
                statuses.append(status)
            if status == 429:
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    wait_for(lambda: statuses.count(200) >= 30, timeout=30, what="a third of the budget spent through Redis")
    redis_server.kill()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not [s for s in statuses if s >= 500], "the local fallback answers, it does not fail"
    assert set(statuses) == {200, 429}
    admitted = statuses.count(200)
    gws[0].wait_events(admitted, timeout=20)
    total = spent(store)
    assert total <= budget + 2 * CALL_COST + 1e-9, f"spent {total:.2f} of a {budget:.2f} budget"
    assert total >= budget - 2 * CALL_COST - 1e-9, f"only {total:.2f} of {budget:.2f} spent: the fallback refused early"
    for gw in gws:
        assert "Redis is unavailable" in gw.log()


def open_stream(gw: GatewayProcess, key: str, max_tokens: int) -> tuple[http.client.HTTPConnection, int]:
    """Start a chat stream and wait for its first chunk (the call is admitted and relayed); (conn, status)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return conn, conn.getresponse().status


def test_slots_of_a_killed_replica_free_within_a_lease_while_live_streams_keep_theirs(
        start_mock, start_gateway, redis_server: RedisServer, tmp_path: Path) -> None:
    lease = 6
    mock = start_mock("--interval-ms", "100", "--tokens", "1000")
    store = tmp_path / "shared.db"
    extra = (f'[redis]\nurl = "{redis_server.url}"\n[limits]\nconcurrency_lease_seconds = {lease}\n'
             "[limits.user]\nconcurrent_requests = 4\n")
    doomed, live = (start_gateway(model_toml("m", [mock.url]), extra, store_path=store) for _ in range(2))
    alice, bob = doomed.create_key("alice"), doomed.create_key("bob")
    short = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    streams = []
    for gw, key in ((live, bob), (doomed, alice)):
        for _ in range(4):
            conn, status = open_stream(gw, key, 400)
            assert status == 200
            streams.append(conn)
    bob_started = time.monotonic()
    for gw, key in ((live, alice), (doomed, bob)):
        status, _, body = post(gw, key, short)
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded", "all four slots are taken"

    doomed.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: post(live, alice, short)[0] == 200, timeout=30, interval=0.2,
             what="alice admitted again on the live replica")
    freed_after = time.monotonic() - killed
    assert freed_after < 2 * lease, f"alice's slots freed {freed_after:.1f} s after the kill (lease {lease} s)"

    def bob_still_refused() -> bool:
        assert post(live, bob, short)[0] == 429, "bob's four streams are open on a live replica: their slots hold"
        return time.monotonic() - bob_started > 2.5 * lease

    wait_for(bob_still_refused, timeout=30, interval=0.5, what="two and a half leases of bob being refused")
    for conn in streams:
        conn.close()
