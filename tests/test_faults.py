"""Upstream faults: unreachable, failing, slow, dying and silent upstreams, and clients that leave.

Real processes on loopback (see conftest.py): the mock upstream is told how to fail per request with
`extra_body={"mock": {...}}`. Every failure must come back as the documented status and OpenAI error
body (or, once a stream has started, as an error event) and never as a hang; every call that reached
routing records exactly one usage event with the status the client saw.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.conftest import GatewayProcess, MockUpstream, free_port, model_toml, wait_for

ANY = object()
HELLO = [{"role": "user", "content": "Hello"}]
FAST_TIMEOUTS = "[upstream]\nrequest_timeout = 1\nidle_timeout = 1\nconnect_timeout = 1\n"


def mock_tokens(text: str) -> int:
    """The mock's documented tokenizer: words and single punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def chat_prompt_tokens(messages: list[dict]) -> int:
    """The mock's documented chat template, counted."""
    return mock_tokens("".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n")


def check_error_body(body: Any, code: str | None, param: Any = ANY) -> dict:
    """`body` is exactly {"error": {...}} with all four OpenAI keys and the expected code."""
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error body: {body!r}"
    err = body["error"]
    missing = {"message", "type", "param", "code"} - set(err)
    assert not missing, f"error body lacks {missing}: {body!r}"
    assert isinstance(err["message"], str) and err["message"], body
    assert err["code"] == code, body
    if param is not ANY:
        assert err["param"] == param, body
    return err


def sdk_error(call: Any, exc_class: type[openai.APIStatusError], status: int, code: str) -> openai.APIStatusError:
    """Run an SDK call that must fail with `exc_class`/`status` and an OpenAI error body with `code`."""
    with pytest.raises(openai.APIStatusError) as info:
        call()
    exc = info.value
    assert isinstance(exc, exc_class), f"expected {exc_class.__name__}, got {type(exc).__name__}: {exc}"
    assert exc.status_code == status, exc
    check_error_body(exc.response.json(), code)
    assert exc.code == code
    return exc


def chat(client: openai.OpenAI, stream: bool = False, mock: dict | None = None, **kwargs: Any) -> Any:
    extra = {"extra_body": {"mock": mock}} if mock else {}
    return client.chat.completions.create(model="m", messages=HELLO, stream=stream, **extra, **kwargs)


def posts(mock: MockUpstream) -> list[dict]:
    """The inference requests the mock received (not tokenize calls)."""
    return [r for r in mock.requests() if r["method"] == "POST" and r["path"].startswith("/v1/")]


def one_gateway(start_mock, start_gateway, extra: str = "") -> tuple[MockUpstream, GatewayProcess, str]:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]), extra=extra)
    return mock, gw, gw.create_key()


def read_stream_until_error(stream: Any) -> tuple[list[str], openai.APIError | None, float]:
    """Consume an SDK stream: (content pieces, the APIError it ended with or None, seconds taken).

    The client's own read timeout bounds every wait; running into it means the gateway let the stream
    hang, which fails the test here rather than passing as "an error".
    """
    started = time.monotonic()
    pieces: list[str] = []
    error: openai.APIError | None = None
    try:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content is not None:
                    pieces.append(choice.delta.content)
    except openai.APITimeoutError:
        pytest.fail(f"the stream hung: no byte and no end for the client's read timeout "
                    f"({time.monotonic() - started:.1f}s in, after {pieces!r})")
    except openai.APIError as exc:
        error = exc
    return pieces, error, time.monotonic() - started


# --- unreachable and failover ------------------------------------------------------------------------------


def test_unreachable_upstream_is_502(start_gateway) -> None:
    gw = start_gateway(model_toml("m", [f"http://127.0.0.1:{free_port()}"]), extra=FAST_TIMEOUTS)
    client = gw.client(gw.create_key())
    sdk_error(lambda: chat(client), openai.InternalServerError, 502, "upstream_unreachable")
    sdk_error(lambda: chat(client, stream=True), openai.InternalServerError, 502, "upstream_unreachable")
    events = gw.wait_events(2)
    assert [e["status"] for e in events] == [502, 502]
    assert sorted(e["streamed"] for e in events) == [0, 1]
    assert all(e["completion_tokens"] == 0 for e in events)


def test_failover_from_a_dead_upstream_to_a_live_one(start_mock, start_gateway) -> None:
    mock = start_mock()
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(model_toml("m", [dead, mock.url]), extra=FAST_TIMEOUTS)
    client = gw.client(gw.create_key())
    for i in range(4):
        reply = chat(client)
        assert reply.choices[0].message.content.startswith("w0"), i
    pieces = [c.choices[0].delta.content for c in chat(client, stream=True) if c.choices]
    assert "".join(p or "" for p in pieces).startswith("w0 w1")
    assert len(posts(mock)) == 5
    events = gw.wait_events(5)
    assert [e["status"] for e in events] == [200] * 5


def test_least_outstanding_spreads_concurrent_requests(start_mock, start_gateway) -> None:
    mocks = [start_mock("--latency-ms", "300"), start_mock("--latency-ms", "300")]
    gw = start_gateway(model_toml("m", [m.url for m in mocks]))
    client = gw.client(gw.create_key())
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: chat(client), range(10)))
    assert all(r.choices[0].message.content.startswith("w0") for r in replies)
    counts = [len(posts(m)) for m in mocks]
    assert sum(counts) == 10
    assert min(counts) >= 3, counts
    assert [e["status"] for e in gw.wait_events(10)] == [200] * 10


# --- upstream error answers --------------------------------------------------------------------------------


def test_upstream_500_is_502(start_mock, start_gateway) -> None:
    mock, gw, key = one_gateway(start_mock, start_gateway)
    client = gw.client(key)
    exc = sdk_error(lambda: chat(client, mock={"mode": "error500"}), openai.InternalServerError, 502,
                    "upstream_error")
    assert "mock upstream failure" in exc.message
    sdk_error(lambda: chat(client, stream=True, mock={"mode": "error500"}), openai.InternalServerError, 502,
              "upstream_error")
    assert len(posts(mock)) == 2
    events = gw.wait_events(2)
    assert [e["status"] for e in events] == [502, 502]


@pytest.mark.parametrize(
    ("status", "exc_class", "code"),
    [
        (400, openai.BadRequestError, "upstream_400"),
        (429, openai.RateLimitError, "upstream_429"),
        (503, openai.InternalServerError, "upstream_503"),
    ],
)
def test_upstream_status_is_passed_on(start_mock, start_gateway, status, exc_class, code) -> None:
    mock, gw, key = one_gateway(start_mock, start_gateway)
    client = gw.client(key)
    override = {"mode": "status", "status": status}
    exc = sdk_error(lambda: chat(client, mock=override), exc_class, status, code)
    assert f"mock status {status}" in exc.message
    sdk_error(lambda: chat(client, stream=True, mock=override), exc_class, status, code)
    assert len(posts(mock)) == 2
    events = gw.wait_events(2)
    assert [e["status"] for e in events] == [status, status]


def test_upstream_invalid_json_is_502(start_mock, start_gateway) -> None:
    mock, gw, key = one_gateway(start_mock, start_gateway)
    client = gw.client(key)
    sdk_error(lambda: chat(client, mock={"mode": "badjson"}), openai.InternalServerError, 502,
              "upstream_invalid_response")
    assert len(posts(mock)) == 1
    assert gw.wait_events(1)[0]["status"] == 502


def test_failed_relayed_call_tells_the_client_its_request_id(start_mock, start_gateway) -> None:
    """README: "Every response of a relayed call carries X-Request-Id, the id under which its usage is recorded".

    A call refused by its upstream is relayed and metered too; the SDK exposes the id as `exc.request_id`.
    """
    mock, gw, key = one_gateway(start_mock, start_gateway)
    client = gw.client(key)
    ok = client.chat.completions.with_raw_response.create(model="m", messages=HELLO)
    failed = sdk_error(lambda: chat(client, mock={"mode": "error500"}), openai.InternalServerError, 502,
                       "upstream_error")
    limited = sdk_error(lambda: chat(client, mock={"mode": "status", "status": 429}), openai.RateLimitError, 429,
                        "upstream_429")
    ids = {e["status"]: e["request_id"] for e in gw.wait_events(3)}
    assert sorted(ids) == [200, 429, 502]
    assert ok.headers.get("x-request-id") == ids[200]
    assert failed.request_id == ids[502], dict(failed.response.headers)
    assert limited.request_id == ids[429], dict(limited.response.headers)


# --- timeouts ----------------------------------------------------------------------------------------------


def test_hanging_upstream_is_504(start_mock, start_gateway) -> None:
    mock, gw, key = one_gateway(start_mock, start_gateway, FAST_TIMEOUTS)
    client = gw.client(key).with_options(timeout=8)
    for stream in (False, True):
        started = time.monotonic()
        sdk_error(lambda stream=stream: chat(client, stream=stream, mock={"mode": "hang"}),
                  openai.InternalServerError, 504, "upstream_timeout")
        assert time.monotonic() - started < 5, f"stream={stream}: took {time.monotonic() - started:.1f}s"
    assert len(posts(mock)) == 2
    events = gw.wait_events(2)
    assert [e["status"] for e in events] == [504, 504]


def test_stream_silent_before_its_first_chunk_is_504(start_mock, start_gateway) -> None:
    """Headers at once, then no data for idle_timeout (request_timeout far away): nothing relayed yet, so 504."""
    extra = "[upstream]\nrequest_timeout = 30\nidle_timeout = 1\nconnect_timeout = 1\n"
    mock, gw, key = one_gateway(start_mock, start_gateway, extra)
    client = gw.client(key).with_options(timeout=12)
    started = time.monotonic()
    sdk_error(lambda: chat(client, stream=True, mock={"latency_ms": 20_000}), openai.InternalServerError, 504,
              "upstream_timeout")
    assert time.monotonic() - started < 4, f"took {time.monotonic() - started:.1f}s with idle_timeout = 1"
    assert gw.wait_events(1)[0]["status"] == 504


def test_upstream_dying_mid_stream_ends_with_an_error_event(start_mock, start_gateway) -> None:
    mock, gw, key = one_gateway(start_mock, start_gateway)
    client = gw.client(key).with_options(timeout=10)
    stream = chat(client, stream=True, mock={"mode": "die", "die_after": 3, "tokens": 10})
    pieces, error, took = read_stream_until_error(stream)
    assert pieces == ["w0", " w1", " w2"]
    assert error is not None, "the stream ended without an error event"
    assert isinstance(error.body, dict) and error.body.get("code", "").startswith("upstream_"), error.body
    assert took < 10
    [event] = gw.wait_events(1)
    assert 500 <= event["status"] < 600
    assert event["streamed"] == 1
    assert event["completion_tokens"] == 3
    assert event["prompt_tokens"] == chat_prompt_tokens(HELLO)
    assert event["estimated"] == 0


def test_upstream_silent_mid_stream_is_cut_after_idle_timeout(start_mock, start_gateway) -> None:
    """README: idle_timeout cuts "a transfer silent this long"; the client must get an error event soon after.

    The mock sends one chunk, then would wait 20 s; the client's read timeout (12 s) bounds the wait.
    """
    extra = "[upstream]\nrequest_timeout = 30\nidle_timeout = 1\nconnect_timeout = 1\n"
    mock, gw, key = one_gateway(start_mock, start_gateway, extra)
    client = gw.client(key).with_options(timeout=12)
    stream = chat(client, stream=True, mock={"tokens": 3, "interval_ms": 20_000})
    pieces, error, took = read_stream_until_error(stream)
    assert pieces == ["w0"]
    assert error is not None, "the stream ended without an error event"
    assert isinstance(error.body, dict) and error.body.get("code") == "upstream_timeout", error.body
    assert took < 4, f"cut after {took:.1f}s of silence with idle_timeout = 1"
    [event] = gw.wait_events(1)
    assert event["status"] == 504
    assert event["completion_tokens"] == 1
    assert event["estimated"] == 0


# --- client leaves -----------------------------------------------------------------------------------------


def test_client_disconnect_mid_stream_stops_the_upstream_and_meters_what_was_produced(
        start_mock, start_gateway) -> None:
    mock, gw, key = one_gateway(start_mock, start_gateway)
    client = gw.client(key).with_options(timeout=10)
    stream = chat(client, stream=True, mock={"interval_ms": 100, "tokens": 50})
    pieces = []
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content)
        if len(pieces) == 3:
            break
    stream.close()
    assert pieces == ["w0", " w1", " w2"]
    wait_for(lambda: mock.stats()["streams_aborted"] == 1, 5, what="the upstream stream to be aborted")
    stats = mock.stats()
    assert stats["streams_started"] == 1 and stats["streams_completed"] == 0
    [event] = gw.wait_events(1)
    assert event["status"] == 499
    assert event["streamed"] == 1
    assert 3 <= event["completion_tokens"] <= 10, event
    assert event["prompt_tokens"] == chat_prompt_tokens(HELLO)
    assert event["estimated"] == 0
