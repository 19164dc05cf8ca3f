"""The request path end to end: the openai SDK -> the gateway process -> the mock upstream process.

Every test checks the stored usage against the numbers the upstream itself reported (or, where
it reports none, against the mock's deterministic tokenizer).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import model_toml

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, gateway!"}]


def mock_tokens(text: str) -> int:
    import re

    return len(re.findall(r"\w+|[^\w\s]", text))


def chat_prompt_tokens(messages: list[dict]) -> int:
    rendered = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
    return mock_tokens(rendered)


@pytest.fixture
def pair(start_mock, start_gateway):
    """A mock upstream and a gateway with one priced model on it, plus a key."""
    mock = start_mock()
    gw = start_gateway(model_toml("m1", [mock.url], prompt_cost_per_1k=0.5, completion_cost_per_1k=2.0))
    key = gw.create_key(user="alice", name="laptop")
    return mock, gw, key


def test_chat_non_streaming_records_the_upstream_usage_exactly(pair) -> None:
    mock, gw, key = pair
    reply = gw.client(key).chat.completions.create(model="m1", messages=MESSAGES, max_tokens=5)
    assert reply.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert reply.usage.prompt_tokens == chat_prompt_tokens(MESSAGES)
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (reply.usage.prompt_tokens, 5)
    assert event["user"] == "alice" and event["model"] == "m1" and event["status"] == 200
    assert event["streamed"] == 0 and event["estimated"] == 0
    assert event["cost"] == pytest.approx(reply.usage.prompt_tokens / 1000 * 0.5 + 5 / 1000 * 2.0)
    assert event["endpoint"] == "/v1/chat/completions"


def test_stream_without_include_usage_is_metered_and_the_usage_chunk_stripped(pair) -> None:
    mock, gw, key = pair
    chunks = list(gw.client(key).chat.completions.create(model="m1", messages=MESSAGES, max_tokens=4, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 w3"
    assert all(c.choices for c in chunks), "the usage-only chunk the gateway asked for must not reach the client"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    sent = [r for r in mock.requests() if r["path"] == "/v1/chat/completions"][-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (chat_prompt_tokens(MESSAGES), 4)
    assert event["streamed"] == 1 and event["estimated"] == 0


def test_stream_with_include_usage_passes_the_usage_chunk(pair) -> None:
    mock, gw, key = pair
    chunks = list(gw.client(key).chat.completions.create(
        model="m1", messages=MESSAGES, max_tokens=3, stream=True, stream_options={"include_usage": True}))
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 3
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (final.usage.prompt_tokens, 3)


def test_completions_and_embeddings(pair) -> None:
    mock, gw, key = pair
    client = gw.client(key)
    done = client.completions.create(model="m1", prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text == "w0 w1 w2 w3 w4 w5"
    streamed = list(client.completions.create(model="m1", prompt="Once upon a time", max_tokens=2, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "w0 w1"
    emb = client.embeddings.create(model="m1", input=["one two", "three"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens == 3
    events = {e["endpoint"] + str(e["streamed"]): e for e in gw.wait_events(3)}
    assert events["/v1/completions0"]["prompt_tokens"] == 4 and events["/v1/completions0"]["completion_tokens"] == 6
    assert events["/v1/completions1"]["prompt_tokens"] == 4 and events["/v1/completions1"]["completion_tokens"] == 2
    assert events["/v1/embeddings0"]["prompt_tokens"] == 3 and events["/v1/embeddings0"]["completion_tokens"] == 0


def test_other_v1_posts_are_passed_through_and_metered(pair) -> None:
    mock, gw, key = pair
    body = {"model": "m1", "input": "rerank me"}
    reply = gw.client(key).post("/responses", body=body, cast_to=object)
    assert reply["object"] == "mock.passthrough" and reply["path"] == "/v1/responses"
    [event] = gw.wait_events(1)
    assert event["endpoint"] == "/v1/responses"
    assert (event["prompt_tokens"], event["completion_tokens"]) == (reply["usage"]["prompt_tokens"], 2)


def test_models_lists_only_what_the_key_may_use(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("a", [mock.url]) + model_toml("b", [mock.url]) +
                       model_toml("hidden", [mock.url], active=False))
    everything = gw.client(gw.create_key())
    assert sorted(m.id for m in everything.models.list()) == ["a", "b"]
    only_b = gw.client(gw.create_key(models="b"))
    assert [m.id for m in only_b.models.list()] == ["b"]
    assert only_b.models.retrieve("b").id == "b"


def test_upstream_model_name_and_headers(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("short", [mock.url], upstream_model="org/Long-Model-Name"))
    key = gw.create_key()
    raw = gw.client(key).chat.completions.with_raw_response.create(model="short", messages=MESSAGES, max_tokens=1)
    assert raw.headers["x-request-id"]
    [received] = [r for r in mock.requests() if r["path"] == "/v1/chat/completions"]
    assert received["body"]["model"] == "org/Long-Model-Name"
    headers = {k.lower(): v for k, v in received["headers"].items()}
    assert "authorization" not in headers
    assert headers["x-request-id"] == raw.headers["x-request-id"]
    [event] = gw.wait_events(1)
    assert event["model"] == "short" and event["request_id"] == raw.headers["x-request-id"]


def test_responses_name_the_model_the_client_asked_for(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("short", [mock.url], upstream_model="org/Long-Model-Name"))
    client = gw.client(gw.create_key())
    assert client.chat.completions.create(model="short", messages=MESSAGES, max_tokens=3).model == "short"
    assert client.completions.create(model="short", prompt="Hi", max_tokens=3).model == "short"
    for options in ({}, {"stream_options": {"include_usage": True}}):
        chunks = list(client.chat.completions.create(model="short", messages=MESSAGES, max_tokens=30, stream=True,
                                                     extra_body={"mock": {"tokens": 40}}, **options))
        assert len(chunks) >= 30 and {c.model for c in chunks} == {"short"}
    assert {r["body"]["model"] for r in mock.requests()} == {"org/Long-Model-Name"}


@pytest.mark.parametrize("tokenizer", ["vllm", "llamacpp"])
def test_streams_without_a_usage_chunk_are_counted_exactly(start_mock, start_gateway, tokenizer: str) -> None:
    """llama-cpp-python sends no usage chunk even when asked; the upstream tokenizer counts instead."""
    mock = start_mock("--usage-chunk", "off", "--tokenize", tokenizer)
    gw = start_gateway(model_toml("m", [mock.url]))
    client = gw.client(gw.create_key())
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=7, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 7
    list(client.completions.create(model="m", prompt="The quick brown fox", max_tokens=3, stream=True))
    events = {e["endpoint"]: e for e in gw.wait_events(2)}
    chat = events["/v1/chat/completions"]
    assert (chat["prompt_tokens"], chat["completion_tokens"], chat["estimated"]) == (
        chat_prompt_tokens(MESSAGES), 7, 0)
    completion = events["/v1/completions"]
    assert (completion["prompt_tokens"], completion["completion_tokens"], completion["estimated"]) == (4, 3, 0)


def test_counting_waits_until_no_user_call_is_in_flight(start_mock, start_gateway) -> None:
    """A single-slot server (llama-cpp-python) stops the stream it is generating when another
    request arrives; the gateway's own tokenize and probe calls must never be that request."""
    mock = start_mock("--usage-chunk", "off", "--tokenize", "llamacpp")
    gw = start_gateway(model_toml("m", [mock.url]), extra="[limits.key]\nconcurrent_requests = 2\n")
    client = gw.client(gw.create_key())
    long = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10, stream=True,
                                          extra_body={"mock": {"interval_ms": 100}})
    next(iter(long))
    for _ in range(2):
        list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, stream=True))
    assert sum(1 for c in long if c.choices and c.choices[0].delta.content) == 9
    events = gw.wait_events(3)
    assert all(e["estimated"] == 0 and e["status"] == 200 for e in events), events
    assert sorted(e["completion_tokens"] for e in events) == [2, 2, 10]
    own = [r for r in mock.requests() if r["path"] in ("/extras/tokenize/count", "/v1/chat/completions")
           and r["body"].get("stream") is not True]
    assert own, "the counts were not asked of the upstream's tokenizer"
    assert all(r["streams_open"] == 0 for r in own), [(r["path"], r["streams_open"]) for r in own]


def test_llama_cpp_bos_token_is_not_counted_in_the_completion(start_mock, start_gateway) -> None:
    """llama-cpp-python's tokenizer adds BOS to every count; generated text has none."""
    mock = start_mock("--usage-chunk", "off", "--tokenize", "llamacpp", "--bos", "1")
    gw = start_gateway(model_toml("m", [mock.url]))
    client = gw.client(gw.create_key())
    list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5, stream=True))
    list(client.completions.create(model="m", prompt="The quick brown fox", max_tokens=3, stream=True))
    events = {e["endpoint"]: e for e in gw.wait_events(2)}
    assert (events["/v1/chat/completions"]["prompt_tokens"], events["/v1/chat/completions"]["completion_tokens"]) == (
        chat_prompt_tokens(MESSAGES) + 1, 5)
    assert (events["/v1/completions"]["prompt_tokens"], events["/v1/completions"]["completion_tokens"]) == (5, 3)


def test_without_usage_or_tokenizer_the_event_is_marked_estimated(start_mock, start_gateway) -> None:
    mock = start_mock("--usage-chunk", "off", "--usage-body", "off", "--tokenize", "none")
    gw = start_gateway(model_toml("m", [mock.url], usage_probe=False))
    client = gw.client(gw.create_key())
    list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8, stream=True))
    [event] = gw.wait_events(1)
    assert event["estimated"] == 1
    assert event["completion_tokens"] > 0 and event["prompt_tokens"] > 0


def test_n_concurrent_requests_give_n_events_with_the_upstream_numbers(pair) -> None:
    mock, gw, key = pair
    client = gw.client(key)

    def one(i: int) -> tuple[str, int, int]:
        n = 1 + i % 5
        if i % 2:
            chunks = list(client.chat.completions.create(
                model="m1", messages=MESSAGES, max_tokens=n, stream=True, stream_options={"include_usage": True}))
            return "stream", chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens
        reply = client.chat.completions.create(model="m1", messages=MESSAGES, max_tokens=n)
        return "plain", reply.usage.prompt_tokens, reply.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    events = gw.wait_events(40)
    assert sum(e["completion_tokens"] for e in events) == sum(r[2] for r in results)
    assert sum(e["prompt_tokens"] for e in events) == sum(r[1] for r in results)
    assert len({e["request_id"] for e in events}) == 40


def test_usage_command_reports_the_stored_events(pair) -> None:
    mock, gw, key = pair
    gw.client(key).chat.completions.create(model="m1", messages=MESSAGES, max_tokens=2)
    gw.wait_events(1)
    report = json.loads(gw.cli("usage", "--by", "model", "--json").stdout)
    assert report["rows"][0]["group"] == "m1"
    assert report["totals"]["completion_tokens"] == 2
    assert report["totals"]["requests"] == 1
