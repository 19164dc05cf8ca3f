"""A SIGKILL (an OOM kill) loses no metered call: the journal is replayed by the next start."""

from __future__ import annotations

import http.client
import json
import signal
import threading
from pathlib import Path

from tests.conftest import GatewayProcess, model_toml, wait_for


def call(gw: GatewayProcess, key: str, stream: bool, tokens: int) -> tuple[str, str]:
    """One chat call: (request id, "complete" or "cut"), or ("", "none") if it was never answered."""
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": tokens, "stream": stream}
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    request_id = ""
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        request_id = resp.headers["X-Request-Id"]
        if not stream:
            json.loads(resp.read())
            return request_id, "complete"
        while (line := resp.readline()) and line.strip() != b"data: [DONE]":
            pass
        return request_id, "complete" if line else "cut"
    except (OSError, http.client.HTTPException, ValueError):
        return request_id, "cut" if request_id else "none"
    finally:
        conn.close()


def test_sigkill_under_mixed_load_then_restart_meters_every_admitted_call(start_mock, start_gateway) -> None:
    mock = start_mock("--interval-ms", "20", "--latency-ms", "5")
    gw = start_gateway(model_toml("m", [mock.url]), run=False)
    # Flush rarely, so that most events are still in the ledger's memory at the kill.
    config = gw.config_path.read_text().replace("flush_interval_seconds = 0.2",
                                                "flush_interval_seconds = 5\njournal_progress_seconds = 0.2")
    gw.config_path.write_text(config)
    gw.start()
    key = gw.create_key()
    seen: list[tuple[str, str, int]] = []
    stop = threading.Event()

    def client(i: int) -> None:
        stream = i % 2 == 1
        tokens = 20 + 10 * i if stream else 5  # streams of 0.4 to 1.8 s, out of step with each other
        while not stop.is_set():
            request_id, outcome = call(gw, key, stream, tokens)
            seen.append((request_id, outcome, tokens))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()

    def mid_load() -> bool:
        stats = mock.stats()
        open_streams = stats["streams_started"] - stats["streams_completed"] - stats["streams_aborted"]
        return sum(o == "complete" for _, o, _ in seen) >= 40 and open_streams >= 3

    wait_for(mid_load, timeout=30, what="calls completed and streams open")
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(20)
    admitted = {rid: (outcome, tokens) for rid, outcome, tokens in seen if rid}
    complete = [rid for rid, (outcome, _) in admitted.items() if outcome == "complete"]
    cut = [rid for rid, (outcome, _) in admitted.items() if outcome == "cut"]
    unanswered = [1 for rid, outcome, _ in seen if not rid]
    assert cut, "some streams were open at the kill"
    assert not [p for p in Path(gw.workdir / "spool").glob("usage-*.jsonl")], "nothing was spooled"
    in_store_before = {e["request_id"] for e in gw.events()}
    assert len(in_store_before) < len(admitted), "some events were still in memory at the kill"

    gw.start()
    events = wait_for(lambda: (found := gw.events()) and {e["request_id"] for e in found} >= set(admitted) and found,
                      timeout=15, what="an event for every call the clients saw admitted")
    by_id = {e["request_id"]: e for e in events}
    assert len(by_id) == len(events), "no call counted twice"
    assert len(events) - len(admitted) <= len(unanswered), "extra events only for calls in flight at the kill"
    for rid in cut:
        assert by_id[rid]["estimated"] == 1 and by_id[rid]["prompt_tokens"] > 0, by_id[rid]
    exact = [rid for rid in complete if not by_id[rid]["estimated"]]
    # A kill between a call's last byte to the client and its journal line (microseconds) leaves an estimate.
    assert len(complete) - len(exact) <= 1
    for rid in exact:
        assert by_id[rid]["status"] == 200 and by_id[rid]["completion_tokens"] == admitted[rid][1], by_id[rid]
    assert "replayed" in gw.log()
    assert gw.stop() == 0, gw.log()
    assert not list((gw.workdir / "spool" / "journal").glob("journal-*.jsonl")), "a clean stop leaves no journal"
