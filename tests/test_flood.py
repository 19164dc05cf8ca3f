"""A flood of made-up API keys costs one store query per distinct key and no memory past the
configured bounds: the negative cache answers repeats (proved by taking the store's key table
away: a query would then fail with 503), and the gateway's RSS stays flat over 100,000 keys."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import GatewayProcess, MockUpstream, model_toml

FLOOD = 100_000
BATCH = 1_000
NEGATIVE_MAX = 10_000


def fake_key(i: int) -> str:
    return f"sk-lgw-{i:043d}"


def statuses(port: int, keys: list[str]) -> list[int]:
    """GET /v1/models with each key, pipelined on one loopback connection; the answers' statuses."""
    found: list[int] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"".join(f"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {k}\r\n\r\n".encode()
                              for k in keys))
        buffer = b""
        while len(found) < len(keys):
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                chunk = conn.recv(1 << 16)
                assert chunk, f"connection closed after {len(found)} answers"
                buffer += chunk
                continue
            head = buffer[:head_end].decode("latin-1")
            length = int(next(line.split(":", 1)[1] for line in head.split("\r\n")
                              if line.lower().startswith("content-length:")))
            while len(buffer) < head_end + 4 + length:
                buffer += conn.recv(1 << 16)
            found.append(int(head.split(" ", 2)[1]))
            buffer = buffer[head_end + 4 + length:]
    return found


def rss_kib(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    status = Path(f"/proc/{gw.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_flood_of_unknown_keys_queries_the_store_once_per_key_and_keeps_memory_flat(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream]) -> None:
    gw = start_gateway(model_toml("m", [start_mock().url]), store_query="?timeout=0.2",
                       extra=f"[keys]\nnegative_ttl_seconds = 3600\nnegative_max_entries = {NEGATIVE_MAX}\n")
    first = [fake_key(i) for i in range(BATCH)]
    assert set(statuses(gw.port, first)) == {401}

    def store(sql: str) -> None:
        with sqlite3.connect(gw.db_path, timeout=10) as conn:
            conn.execute(sql)

    store("ALTER TABLE api_keys RENAME TO api_keys_away")
    try:
        assert statuses(gw.port, [fake_key(FLOOD + 1)]) == [503], "the store is really unavailable now"
        assert set(statuses(gw.port, first)) == {401}, "repeats are answered without a store query"
    finally:
        store("ALTER TABLE api_keys_away RENAME TO api_keys")
    started = time.monotonic()
    half = None
    for start in range(BATCH, FLOOD, BATCH):
        assert set(statuses(gw.port, [fake_key(i) for i in range(start, start + BATCH)])) == {401}
        if start + BATCH == FLOOD // 2:
            half = rss_kib(gw)
    assert half is not None
    grown = rss_kib(gw) - half
    assert grown < 4 * 1024, f"RSS grew by {grown} KiB over the second 50,000 unknown keys"
    assert time.monotonic() - started < 240
