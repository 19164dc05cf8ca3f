"""Upstream pools that know their health, against real upstream processes on loopback.

An upstream killed and brought back is ejected and re-admitted by the active checks; failed calls
eject an upstream for a back-off that grows, after which one trial call (and only one) decides;
a model with no upstream to call answers 503 at once; a 429 or 503 moves on to the next upstream
when the model's setting says so. What the gateway knows is read from /readyz. The real
llama-cpp-python server shows that health checks never break a stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.conftest import GatewayProcess, MockUpstream, free_port, http_json, model_toml, wait_for
from tests.llamacpp import MODEL_ALIAS, LlamaServer, llama_fixture  # noqa: F401

HELLO = [{"role": "user", "content": "Hello"}]
# Timeouts far above anything a test waits for: an answer that comes fast did not wait on them.
SLOW_TIMEOUTS = "[upstream]\nconnect_timeout = 20\nrequest_timeout = 60\nidle_timeout = 60\n"
NO_CHECKS = {"health_check_seconds": 0}


def upstreams(gw: GatewayProcess, model: str = "m") -> list[dict]:
    """The model's upstreams as /readyz shows them."""
    status, body = http_json("GET", gw.url + "/readyz")
    assert status == 200, body
    return body["models"][model]


def chat(client: openai.OpenAI, mock: dict | None = None, **kwargs: Any) -> Any:
    extra = {"extra_body": {"mock": mock}} if mock else {}
    return client.chat.completions.create(model="m", messages=HELLO, **extra, **kwargs)


def posts(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests() if r["method"] == "POST" and r["path"] == "/v1/chat/completions")


def refused(call: Callable[[], Any]) -> tuple[openai.APIStatusError, float]:
    """The error an SDK call ends with, and how long it took."""
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value, time.monotonic() - began


def test_an_upstream_killed_and_brought_back_is_ejected_then_readmitted_by_the_checks(
        start_mock: Callable[..., MockUpstream], start_gateway: Callable[..., GatewayProcess]) -> None:
    port = free_port()
    first = start_mock("--listen", f"127.0.0.1:{port}")
    second = start_mock()
    # Credentials in an upstream URL never show in /readyz or the log.
    secret_url = f"http://probe:pw-s3cret@127.0.0.1:{port}"
    gw = start_gateway(model_toml("m", [secret_url, second.url], health_check_seconds=0.2, eject_after_failures=2,
                                  eject_seconds=60))
    client = gw.client(gw.create_key())
    wait_for(lambda: (u := upstreams(gw)[0])["last_check"] and u["last_check"]["ok"], what="a first passed check")

    first.stop()
    down = wait_for(lambda: (u := upstreams(gw)[0])["state"] == "ejected" and u, timeout=10, what="the ejection")
    assert down["last_check"]["ok"] is False and down["last_check"]["error"] == "could not connect"
    assert down["healthy"] is False and down["ejections"] == 1 and down["failed_checks"] >= 2
    assert down["ejected_until"] > time.time() + 30
    for _ in range(3):
        assert chat(client).choices[0].message.content
    assert posts(second) == 3
    assert upstreams(gw)[0]["failures"] == 0, "a call was sent to the ejected upstream"

    back = start_mock("--listen", f"127.0.0.1:{port}")
    readmitted = wait_for(lambda: (u := upstreams(gw)[0])["healthy"] and u, timeout=10, what="the re-admission")
    assert readmitted["state"] == "healthy" and readmitted["ejected_until"] is None
    assert readmitted["ejections"] == 1 and readmitted["consecutive_failures"] == 0
    assert chat(client).choices[0].message.content
    assert posts(back) == 1, "the idle pool's first upstream takes the call again"

    shown = str(http_json("GET", gw.url + "/readyz")[1]) + gw.log()
    assert "pw-s3cret" not in shown
    assert "http://***@127.0.0.1" in str(upstreams(gw)[0]["url"])
    assert "ejected" in gw.log()


def test_failed_calls_eject_with_a_growing_back_off_and_one_trial_call_readmits(
        start_mock: Callable[..., MockUpstream], start_gateway: Callable[..., GatewayProcess]) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url], eject_after_failures=2, eject_seconds=3, eject_max_seconds=20,
                                  **NO_CHECKS), extra=SLOW_TIMEOUTS)
    client = gw.client(gw.create_key())
    for _ in range(2):
        err, _ = refused(lambda: chat(client, {"mode": "error500"}))
        assert err.status_code == 502
    [state] = upstreams(gw)
    assert (state["state"], state["failures"], state["consecutive_failures"], state["ejections"]) == \
        ("ejected", 2, 2, 1)

    # No upstream to call: a 503 at once, not a wait on the (hanging) upstream's timeouts.
    err, took = refused(lambda: chat(client, {"mode": "hang"}))
    assert err.status_code == 503 and err.code == "no_healthy_upstream", err
    assert took < 2.0, f"{took:.2f} s"
    assert 1 <= int(err.response.headers["Retry-After"]) <= 3
    assert posts(mock) == 2

    # The trial call fails: ejected again, for twice as long.
    wait_for(lambda: upstreams(gw)[0]["state"] == "half-open", timeout=10, what="the end of the first back-off")
    err, _ = refused(lambda: chat(client, {"mode": "error500"}))
    assert err.status_code == 502
    [state] = upstreams(gw)
    assert (state["state"], state["ejections"]) == ("ejected", 2)
    assert state["ejected_until"] - time.time() > 4, "the second back-off is not longer than the first"

    # Two calls during the trial: one goes to the upstream, the other is answered 503 at once.
    wait_for(lambda: upstreams(gw)[0]["state"] == "half-open", timeout=10, what="the end of the second back-off")
    with ThreadPoolExecutor(2) as pool:
        trial = pool.submit(chat, client, {"latency_ms": 1500})
        wait_for(lambda: upstreams(gw)[0]["trial_in_flight"], timeout=5, what="the trial call")
        err, took = refused(lambda: chat(client))
        assert err.status_code == 503 and err.code == "no_healthy_upstream" and took < 1.0
        assert trial.result().choices[0].message.content
    assert posts(mock) == 4
    [state] = upstreams(gw)
    assert (state["state"], state["healthy"], state["consecutive_failures"]) == ("healthy", True, 0)
    assert chat(client).choices[0].message.content
    events = gw.wait_events(7)
    assert sorted(e["status"] for e in events) == [200, 200, 502, 502, 502, 503, 503]


def test_a_passed_check_lets_the_trial_call_of_an_upstream_ejected_by_its_calls_go_at_once(
        start_mock: Callable[..., MockUpstream], start_gateway: Callable[..., GatewayProcess]) -> None:
    """The server answers its health path but failed its calls: a passed check does not trust it
    again by itself, it only ends the back-off, and the next call decides."""
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url], eject_after_failures=2, eject_seconds=120,
                                  health_check_seconds=0.2))
    client = gw.client(gw.create_key())
    for _ in range(2):
        err, _ = refused(lambda: chat(client, {"mode": "error500"}))
        assert err.status_code == 502
    ejected_at = time.time()
    state = wait_for(lambda: (u := upstreams(gw)[0])["state"] == "half-open" and u, timeout=5,
                     what="a passed check ending the back-off")
    assert state["healthy"] is False and state["last_check"]["ok"] and state["last_check"]["at"] > ejected_at
    assert chat(client).choices[0].message.content
    assert upstreams(gw)[0]["state"] == "healthy"


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("failover", [True, False])
def test_a_busy_upstream_moves_the_call_on_when_the_model_says_so(
        start_mock: Callable[..., MockUpstream], start_gateway: Callable[..., GatewayProcess],
        status: int, failover: bool) -> None:
    busy = start_mock("--mode", "status", "--status", str(status))
    free = start_mock()
    gw = start_gateway(model_toml("m", [busy.url, free.url], failover_on_busy=failover, eject_after_failures=100,
                                  **NO_CHECKS))
    client = gw.client(gw.create_key())
    if failover:
        assert chat(client).choices[0].message.content
    else:
        err, _ = refused(lambda: chat(client))
        assert err.status_code == status and err.response.headers["Retry-After"] == "1"
    assert (posts(busy), posts(free)) == (1, 1 if failover else 0)
    first = upstreams(gw)[0]
    assert first["failovers"] == (1 if failover else 0)
    assert first["failures"] == (1 if status == 503 else 0), "a 429 is the upstream's answer, not its failure"
    if failover:
        # The next call: an upstream whose last call failed (a 503) is tried after the others.
        assert chat(client).choices[0].message.content
        assert posts(busy) == (1 if status == 503 else 2)


def test_when_every_upstream_is_busy_the_client_gets_the_last_answer(
        start_mock: Callable[..., MockUpstream], start_gateway: Callable[..., GatewayProcess]) -> None:
    first, second = (start_mock("--mode", "status", "--status", "429") for _ in range(2))
    gw = start_gateway(model_toml("m", [first.url, second.url], **NO_CHECKS))
    client = gw.client(gw.create_key())
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, stream=True)
    assert info.value.response.headers["Retry-After"] == "1"
    assert (posts(first), posts(second)) == (1, 1)
    assert [u["failovers"] for u in upstreams(gw)] == [1, 0]


def test_health_checks_never_break_a_llama_cpp_python_stream(
        llama: LlamaServer, start_gateway: Callable[..., GatewayProcess]) -> None:
    """llama-cpp-python stops the stream it generates when a request that takes its model lock
    arrives, and GET /v1/models takes it: checked with that path every 0.1 s, a long stream
    still runs to its max_tokens, because no check goes to an upstream with a call in flight."""
    gw = start_gateway(model_toml(MODEL_ALIAS, [llama.url], health_check_seconds=0.1, health_check_path="/v1/models")
                       + model_toml("default-path", [llama.url], upstream_model=MODEL_ALIAS))
    client = gw.client(gw.create_key())

    def checked_since(ts: float) -> bool:
        check = upstreams(gw, MODEL_ALIAS)[0]["last_check"]
        return bool(check and check["ok"] and check["status"] == 200 and check["at"] > ts)

    args = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
            "max_tokens": 80, "temperature": 0, "seed": 7}
    direct = openai.OpenAI(base_url=llama.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert direct.chat.completions.create(**args).choices[0].finish_reason == "length", "too short a story"
    wait_for(lambda: checked_since(0), timeout=10, what="a check of /v1/models")
    began = time.time()
    chunks = list(client.chat.completions.create(**args, stream=True))
    ended = time.time()
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == ["length"], f"the stream was cut short: {reasons} after {len(pieces)} pieces"
    [event] = gw.wait_events(1)
    assert event["completion_tokens"] == 80 and event["status"] == 200
    assert ended - began > 0.5, "too short a stream to meet a check"
    wait_for(lambda: checked_since(ended), timeout=10, what="the checks going on after the stream")
    # The default path: llama-cpp-python has no /health; its 404 (which takes no lock) shows it is up.
    check = wait_for(lambda: upstreams(gw, "default-path")[0]["last_check"], timeout=10, what="a default check")
    assert (check["ok"], check["status"]) == (True, 404)
