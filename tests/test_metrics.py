"""Prometheus metrics, scraped from a real gateway process after real traffic through the openai SDK,
and checked against what happened: the calls made, the refusals met, the usage ledger's rows."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayProcess, RedisServer, free_port, http_json, model_toml, wait_for
from tests.metric_names import GATEWAY_METRICS, TARGET_LABELS, series_name
from tests.test_hostile import raw_exchange, status_of
from tests.test_lifecycle import spooled, store_locked

HELLO = [{"role": "user", "content": "Tell me a story"}]
PRICES = {"prompt_cost_per_1k": 1.0, "completion_cost_per_1k": 2.0}
Samples = dict[tuple[str, frozenset], float]


OURS = ("llmgateway_", "gen_ai_")


def exported_metrics(samples: Samples) -> dict[str, frozenset[str]]:
    """The gateway's own metrics in a scrape (a histogram by its own name) and the labels on each."""
    found: dict[str, set[str]] = {}
    for name, labels in samples:
        if name.startswith(OURS):
            found.setdefault(series_name(name), set()).update(label for label, _ in labels if label != "le")
    return {name: frozenset(labels) for name, labels in found.items()}


def scrape(port: int) -> Samples:
    """Every sample of GET /metrics on the metrics port: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def metrics_gateway(start_gateway: Callable[..., GatewayProcess], models: str, extra: str = "",
                    **kwargs: object) -> tuple[GatewayProcess, int]:
    port = free_port()
    gw = start_gateway(models, f'[metrics]\nlisten = "127.0.0.1:{port}"\n{extra}', **kwargs)
    return gw, port


def open_stream(gw: GatewayProcess, key: str, model: str) -> http.client.HTTPConnection:
    """A chat stream that takes a while (a chunk every 100 ms), read up to its headers."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": model, "messages": HELLO, "max_tokens": 30, "stream": True, "mock": {"interval_ms": 100}}),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    return conn


def test_metrics_tell_what_happened(start_mock, start_gateway) -> None:
    mock = start_mock()
    dead = f"http://127.0.0.1:{free_port()}"
    models = (model_toml("m", [mock.url], **PRICES) + model_toml("pool", [dead, mock.url])
              + model_toml("rpm", [mock.url]) + "limits = {requests_per_minute = 1}\n"
              + model_toml("conc", [mock.url]) + "limits = {concurrent_requests = 1}\n")
    gw, port = metrics_gateway(start_gateway, models, "[limits.user]\ncost_per_day = 0.5\n"
                               "[upstream]\nconnect_timeout = 1\n")
    key = gw.create_key("alice")
    client = gw.client(key)
    for stream in (False, True):
        list(client.chat.completions.create(model="m", messages=HELLO, max_tokens=5, stream=stream) if stream
             else [client.chat.completions.create(model="m", messages=HELLO, max_tokens=5)])
        list(client.completions.create(model="m", prompt="Once upon", max_tokens=3, stream=stream) if stream
             else [client.completions.create(model="m", prompt="Once upon", max_tokens=3)])
    client.chat.completions.create(model="pool", messages=HELLO, max_tokens=2)
    client.chat.completions.create(model="rpm", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="rpm", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as budget:
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=100_000)
    assert budget.value.code == "insufficient_quota"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=2,
                                       extra_body={"mock": {"mode": "error500"}})
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-lgw-" + "x" * 43).chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert http_json("POST", gw.url + "/v1/chat/completions", "not an object", {"Authorization": f"Bearer {key}"}
                     )[0] == 400
    too_long = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n"
    assert status_of(raw_exchange(gw.port, too_long.encode())) == 413

    conn = open_stream(gw, key, "conc")
    during = scrape(port)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="conc", messages=HELLO, max_tokens=2)
    assert value(during, "llmgateway_requests_in_flight") == 1
    assert value(during, "llmgateway_streams_in_flight") == 1
    assert value(during, "llmgateway_upstream_in_flight", model="conc") == 1
    conn.close()

    events = gw.wait_events(8)
    samples = wait_for(lambda: (s := scrape(port)) and value(s, "llmgateway_requests_in_flight") == 0
                       and value(s, "llmgateway_usage_queue_depth") == 0 and s, what="the calls to end and flush")

    # Calls by model, endpoint and status class: one per ledger row.
    expected = Counter((e["model"], e["endpoint"], f"{e['status'] // 100}xx" if e["status"] != 499 else "4xx")
                       for e in events)
    for (model, endpoint, status_class), count in expected.items():
        assert value(samples, "llmgateway_requests_total", model=model, route=endpoint,
                     status_class=status_class) == count, (model, endpoint, status_class)
    assert value(samples, "llmgateway_requests_total") == len(events)
    assert value(samples, "llmgateway_requests_total", model="m", status_class="5xx") == 1

    # Histograms: one duration per call, one first chunk per stream, token usage per successful call.
    for model in ("m", "pool", "rpm", "conc"):
        calls = [e for e in events if e["model"] == model]
        assert value(samples, "gen_ai_client_operation_duration_seconds_count",
                     gen_ai_request_model=model) == len(calls), model
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="text_completion",
                 gen_ai_request_model="m") == 2
    streams = [e for e in events if e["streamed"]]  # the one cut by its client (499) had its first chunk too
    assert value(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") == len(streams) == 3
    assert value(samples, "gen_ai_client_operation_time_per_output_chunk_seconds_count",
                 gen_ai_request_model="m") == 2
    ok = [e for e in events if e["status"] < 400]
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="output") == len(ok)
    assert value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(
        e["prompt_tokens"] for e in ok)

    # Tokens and cost equal the ledger's, model by model.
    for model in ("m", "pool", "rpm", "conc"):
        rows = [e for e in events if e["model"] == model]
        assert value(samples, "llmgateway_tokens_total", model=model, type="prompt") == sum(
            e["prompt_tokens"] for e in rows), model
        assert value(samples, "llmgateway_tokens_total", model=model, type="completion") == sum(
            e["completion_tokens"] for e in rows), model
    assert value(samples, "llmgateway_cost_total", model="m") == pytest.approx(
        sum(e["cost"] for e in events if e["model"] == "m"))
    assert value(samples, "llmgateway_cost_total", model="m") > 0

    refusals = {kind: value(samples, "llmgateway_refusals_total", kind=kind)
                for kind in ("auth", "rpm", "budget", "concurrency", "model", "body", "tpm", "shutdown")}
    assert refusals == {"auth": 1, "rpm": 1, "budget": 1, "concurrency": 1, "model": 1, "body": 2, "tpm": 0,
                        "shutdown": 0}

    assert value(samples, "llmgateway_upstream_failovers_total", model="pool", upstream=dead) >= 1
    assert value(samples, "llmgateway_upstream_failures_total", model="pool", upstream=dead) >= 1
    assert value(samples, "llmgateway_upstream_failovers_total", model="pool", upstream=mock.url) == 0
    assert value(samples, "llmgateway_upstream_healthy", model="m", upstream=mock.url) == 1

    assert value(samples, "llmgateway_job_runs_total", job_id="usage-flush") >= 1
    assert value(samples, "llmgateway_job_failures_total", job_id="usage-flush") == 0
    assert value(samples, "llmgateway_job_last_success_timestamp_seconds", job_id="usage-flush") > 0
    assert value(samples, "llmgateway_store_operation_duration_seconds_count", operation="insert_usage") >= 1
    assert value(samples, "llmgateway_usage_flush_duration_seconds_count") >= 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert ("llmgateway_redis_up", frozenset()) not in samples, "no Redis configured, no Redis gauge"
    exported = exported_metrics(samples)
    promised = {name: labels for name, (_, labels) in GATEWAY_METRICS.items()
                if name.startswith(OURS) and name != "llmgateway_redis_up"}
    assert exported == promised, "exactly the names and labels the alert rules and the dashboard use"
    assert not set().union(*exported.values()) & TARGET_LABELS, "no label Prometheus would rename exported_*"

    # Nothing names a person or a key; /metrics is not on the public port.
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "alice" not in text and key not in text and key[:12] not in text
    assert http_json("GET", gw.url + "/metrics")[0] == 404


def test_a_store_outage_shows_as_flush_failures_and_a_growing_spool(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw, port = metrics_gateway(start_gateway, model_toml("m", [mock.url]), "[jobs]\nrollup_interval_seconds = 1\n",
                               store_query="?timeout=0.2")
    client = gw.client(gw.create_key())
    client.chat.completions.create(model="m", messages=HELLO, max_tokens=1)
    gw.wait_events(1)
    assert value(scrape(port), "llmgateway_usage_flush_failures_total") == 0
    with store_locked(gw.db_path):
        for n in range(1, 4):
            client.chat.completions.create(model="m", messages=HELLO, max_tokens=n)
        wait_for(lambda: spooled(gw), 10, what="a spool file while the store is locked")
        during = wait_for(lambda: (s := scrape(port)) and value(s, "llmgateway_usage_spool_files")
                          and value(s, "llmgateway_job_failures_total", job_id="rollups") and s,
                          what="the spool and a failed rollup in the metrics")
        assert value(during, "llmgateway_usage_flush_failures_total") >= 1
        assert value(during, "llmgateway_usage_spool_files") == len(spooled(gw))
        assert value(during, "llmgateway_usage_spool_bytes") == sum(p.stat().st_size for p in spooled(gw))
    gw.wait_events(4)
    after = wait_for(lambda: (s := scrape(port)) and value(s, "llmgateway_usage_spool_files") == 0 and s,
                     what="the spool replayed")
    assert value(after, "llmgateway_usage_spool_bytes") == 0
    failed_at = time.time()
    wait_for(lambda: value(scrape(port), "llmgateway_job_last_success_timestamp_seconds", job_id="rollups")
             > failed_at, what="a rollup that succeeds once the store is back")
    assert value(after, "llmgateway_tokens_total", type="completion") == 1 + 1 + 2 + 3


def test_redis_up_follows_redis(start_mock, start_gateway, redis_server: RedisServer) -> None:
    mock = start_mock()
    gw, port = metrics_gateway(start_gateway, model_toml("m", [mock.url]),
                               f'[redis]\nurl = "{redis_server.url}"\n[limits.user]\nrequests_per_minute = 100\n')
    client = gw.client(gw.create_key())
    assert value(wait_for(lambda: scrape(port), what="a scrape"), "llmgateway_redis_up") == 1
    redis_server.kill()

    def down() -> bool:
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=1)
        return ("llmgateway_redis_up", frozenset()) in (samples := scrape(port)) and not value(samples,
                                                                                           "llmgateway_redis_up")

    wait_for(down, 15, interval=0.2, what="llmgateway_redis_up 0")


def test_shutdown_refusals_are_counted_and_the_metrics_port_closes(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw, port = metrics_gateway(start_gateway, model_toml("m", [mock.url]), server="drain_seconds = 10")
    key = gw.create_key()
    conn = open_stream(gw, key, "m")
    gw.proc.send_signal(signal.SIGTERM)  #: the open stream drains, new calls are refused

    def refused() -> bool:
        status = http_json("POST", gw.url + "/v1/chat/completions", {"model": "m", "messages": HELLO},
                           {"Authorization": f"Bearer {key}"})[0]
        return status == 503

    wait_for(refused, what="a 503 while draining")
    assert value(scrape(port), "llmgateway_refusals_total", kind="shutdown") >= 1
    conn.close()
    assert gw.proc.wait(30) == 0
    with pytest.raises(OSError):
        scrape(port)


def test_metrics_are_off_by_default(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]))
    assert http_json("GET", gw.url + "/metrics")[0] == 404
    assert "metrics at" not in gw.log()


def test_a_metrics_port_in_use_stops_the_start_with_a_clear_error(start_mock, start_gateway) -> None:
    mock = start_mock()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = start_gateway(model_toml("m", [mock.url]), f'[metrics]\nlisten = "127.0.0.1:{port}"\n', run=False)
        result = gw.cli("serve", check=False)
    assert result.returncode == 2
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in result.stderr
