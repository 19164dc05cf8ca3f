"""Nothing metered is lost: across SIGTERM of the real process, and across a store that fails."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from tests.conftest import model_toml, wait_for

MESSAGES = [{"role": "user", "content": "Tell me a story"}]


@contextmanager
def store_locked(db: Path) -> Iterator[None]:
    """Hold an exclusive lock on the SQLite store: every write from the gateway fails meanwhile."""
    holder = sqlite3.connect(db, isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def spooled(gw) -> list[Path]:
    return sorted((gw.workdir / "spool").glob("usage-*.jsonl"))


def test_sigterm_drains_open_streams_and_flushes(start_mock, start_gateway) -> None:
    mock = start_mock("--interval-ms", "50", "--tokens", "1000")
    gw = start_gateway(model_toml("m", [mock.url]))
    client = gw.client(gw.create_key())
    first_chunk = threading.Barrier(5 + 1, timeout=20)
    results: list[str] = []

    def stream() -> None:
        text = ""
        for i, chunk in enumerate(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=30,
                                                                 stream=True)):
            if i == 0:
                first_chunk.wait()
            text += chunk.choices[0].delta.content or ""
        results.append(text)

    threads = [threading.Thread(target=stream) for _ in range(5)]
    for t in threads:
        t.start()
    first_chunk.wait()
    gw.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _answer(gw.port, "/v1/models")[0] == 503, 5, what="new requests refused after SIGTERM")
    status, headers, body = _answer(gw.port, "/v1/models")
    assert headers.get("connection") == "close" and headers.get("retry-after") == "1"
    assert json.loads(body)["error"]["code"] == "shutting_down"
    assert _answer(gw.port, "/healthz")[0] == 200, "liveness still answers while draining"
    for t in threads:
        t.join(20)
    assert gw.proc.wait(20) == 0
    expected = " ".join(f"w{i}" for i in range(30))
    assert results == [expected] * 5, "open streams must finish during the drain period"
    events = gw.events()
    assert len(events) == 5
    assert all(e["completion_tokens"] == 30 and e["status"] == 200 for e in events)
    assert "final usage flush" in gw.log()


def _answer(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET `path` on a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_connections_queued_at_sigterm_get_an_answer_not_a_reset(start_mock, start_gateway) -> None:
    """Requests that wait in the accept queue when SIGTERM arrives are answered (503), never reset."""
    gw = start_gateway(model_toml("m", [start_mock().url]))
    gw.proc.send_signal(signal.SIGSTOP)
    queued = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
            queued.append(sock)
        gw.proc.send_signal(signal.SIGTERM)
    finally:
        gw.proc.send_signal(signal.SIGCONT)
    answers = []
    for sock in queued:
        try:
            answers.append(sock.recv(64).split(b"\r\n", 1)[0])
        except ConnectionResetError:
            answers.append(b"reset")
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 ") for a in answers), answers
    assert gw.proc.wait(20) == 0


def test_streams_longer_than_the_drain_are_cut_with_an_error_and_still_metered(start_mock, start_gateway) -> None:
    mock = start_mock("--interval-ms", "100", "--tokens", "1000")
    gw = start_gateway(model_toml("m", [mock.url]), server="drain_seconds = 0.5")
    client = gw.client(gw.create_key())
    stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=200, stream=True)
    received = [next(stream) for _ in range(3)]
    gw.proc.send_signal(signal.SIGTERM)
    try:
        for chunk in stream:
            received.append(chunk)
        raise AssertionError("the cut stream must end with an error event")
    except openai.APIError as err:
        assert "shutting down" in str(err)
    assert gw.proc.wait(20) == 0
    [event] = gw.events()
    assert event["status"] == 503
    assert 3 <= event["completion_tokens"] < 200
    assert event["completion_tokens"] >= len(received) and event["estimated"] == 0


def test_sigterm_after_done_sends_nothing_more_and_meters_200(start_mock, start_gateway) -> None:
    """The upstream sent [DONE] but holds its response open; the drain ends before it closes.
    The client already has the whole stream: no error event may follow [DONE], and it is a 200."""
    mock = start_mock("--linger-ms", "20000")
    gw = start_gateway(model_toml("m", [mock.url]), server="drain_seconds = 0.5")
    key = gw.create_key()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": MESSAGES, "max_tokens": 5, "stream": True}),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    lines = []
    while not lines or lines[-1] != b"data: [DONE]":
        line = resp.readline()
        assert line, f"the stream ended before [DONE]: {lines!r}"
        lines.append(line.strip())
    gw.proc.send_signal(signal.SIGTERM)
    after = resp.read()
    conn.close()
    assert after.strip() == b"", f"sent after [DONE]: {after!r}"
    assert gw.proc.wait(20) == 0
    [event] = gw.events()
    assert event["status"] == 200 and event["completion_tokens"] == 5 and event["estimated"] == 0


@pytest.fixture
def warm(start_mock, start_gateway):
    """A gateway whose store gives up after 0.2 s on a lock, with its key cached by one call."""
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]), store_query="?timeout=0.2")
    client = gw.client(gw.create_key())
    client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    gw.wait_events(1)
    return gw, client


def test_store_outage_spools_events_and_replays_them(warm) -> None:
    gw, client = warm
    with store_locked(gw.db_path):
        for n in range(1, 11):
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=n)
        wait_for(lambda: spooled(gw), 10, what="spool file while the store is locked")
    events = gw.wait_events(11)
    assert sorted(e["completion_tokens"] for e in events) == [1] + list(range(1, 11))
    wait_for(lambda: not spooled(gw), 10, what="spool emptied after replay")
    assert "usage store reachable again" in gw.log()


def test_spooled_events_survive_a_restart(warm) -> None:
    gw, client = warm
    with store_locked(gw.db_path):
        for _ in range(4):
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
        assert gw.stop(signal.SIGTERM) == 0
        assert spooled(gw), "the final flush must spool what the store refused"
    gw.start()
    events = gw.wait_events(5)
    assert sum(e["completion_tokens"] for e in events) == 1 + 4 * 2
    wait_for(lambda: not spooled(gw), 10, what="spool replayed after restart")
