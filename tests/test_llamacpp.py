"""The request path against the real peer: the openai SDK -> the gateway -> llama-cpp-python's server.

Each test first asks the server itself (no gateway) for the same deterministic request
(temperature 0, a fixed seed, a few tokens), then checks that going through the gateway gives the
same text and that the stored usage is what the server counted. The server sends no usage in
streams, even when asked, so a stream is metered by its tokenizer (`/extras/tokenize/count`) and a
one-token probe of the chat prompt; a count the gateway could not make exactly must be flagged
`estimated`, never stored as if exact.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.conftest import GatewayProcess, model_toml
from tests.llamacpp import MODEL_ALIAS, N_CTX, LlamaServer, llama_fixture, llama_queued_fixture  # noqa: F401

SEED = 7
CAPITAL = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "What is the capital of France?"}]  # stops by itself
HAIKU = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Write a haiku about rain."}]  # cut by max_tokens
COLOURS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List three colours."}]


def direct(server: LlamaServer) -> openai.OpenAI:
    """A client that goes straight to the server, for the reference answer."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def chat_args(messages: list[dict], max_tokens: int = 8) -> dict[str, Any]:
    return {"model": MODEL_ALIAS, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": SEED}


def reference(server: LlamaServer, messages: list[dict], max_tokens: int = 8) -> tuple[str, str, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens) as the server answers without a gateway."""
    reply = direct(server).chat.completions.create(**chat_args(messages, max_tokens))
    choice = reply.choices[0]
    assert choice.message.content and reply.usage is not None
    return choice.message.content, choice.finish_reason, reply.usage.prompt_tokens, reply.usage.completion_tokens


def read_stream(stream: Any) -> tuple[str, str | None, list[Any]]:
    """(text, last finish_reason, chunks) of a chat stream; iterating raises if the stream failed."""
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, reasons[-1] if reasons else None, chunks


def exact_or_flagged(event: dict, prompt: int, completion: int) -> bool:
    """The stored counts are the server's own, or the event says they are not."""
    return bool(event["estimated"]) or (event["prompt_tokens"], event["completion_tokens"]) == (prompt, completion)


Via = tuple[GatewayProcess, openai.OpenAI]


def gateway_on(start_gateway: Callable[..., GatewayProcess], server: LlamaServer) -> Via:
    """A gateway with the server as chat model `smollm2` and embedding model `smollm2-embed`, and a client."""
    gw = start_gateway(model_toml(MODEL_ALIAS, [server.url]) +
                       model_toml("smollm2-embed", [server.url], kind="embedding", upstream_model=MODEL_ALIAS))
    return gw, gw.client(gw.create_key())


@pytest.fixture
def via(llama: LlamaServer, start_gateway: Callable[..., GatewayProcess]) -> Via:
    return gateway_on(start_gateway, llama)


def test_chat_is_answered_and_metered_as_the_server_counts(llama: LlamaServer, via: Via) -> None:
    text, reason, prompt, completion = reference(llama, CAPITAL)
    assert reason == "stop"
    gw, client = via
    reply = client.chat.completions.create(**chat_args(CAPITAL))
    assert reply.choices[0].message.content == text and reply.choices[0].finish_reason == reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt, completion)
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (prompt, completion)
    assert (event["status"], event["streamed"], event["estimated"]) == (200, 0, 0)
    assert event["model"] == MODEL_ALIAS and event["endpoint"] == "/v1/chat/completions"


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chat_stream_gives_the_plain_text_and_the_servers_counts(llama: LlamaServer, via: Via,
                                                                   include_usage: bool) -> None:
    """The server sends no usage chunk even when asked: if one reaches the client, it is right."""
    text, reason, prompt, completion = reference(llama, HAIKU)
    assert reason == "length"
    gw, client = via
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    streamed, streamed_reason, chunks = read_stream(client.chat.completions.create(**chat_args(HAIKU), stream=True,
                                                                                   **extra))
    assert (streamed, streamed_reason) == (text, reason)
    usages = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    if not include_usage:
        assert not usages, "a usage chunk the client did not ask for reached it"
    for usage in usages:
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"]) == (prompt, completion, 0)
    assert (event["status"], event["streamed"]) == (200, 1)


def test_a_stream_without_usage_is_counted_by_the_servers_tokenizer_and_a_chat_probe(
        llama: LlamaServer, via: Via) -> None:
    text, reason, prompt, completion = reference(llama, CAPITAL)
    gw, client = via
    mark = llama.log_mark()
    streamed, _, _ = read_stream(client.chat.completions.create(**chat_args(CAPITAL), stream=True))
    assert streamed == text
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"]) == (prompt, completion, 0)
    received = llama.requests_since(mark)
    assert ("POST", "/extras/tokenize/count", 200) in received, received
    chat_posts = [r for r in received if r[:2] == ("POST", "/v1/chat/completions")]
    assert len(chat_posts) >= 2 and all(r[2] == 200 for r in chat_posts), "the stream and the prompt probe"


def test_completions_plain_and_streamed(llama: LlamaServer, via: Via) -> None:
    args = {"model": MODEL_ALIAS, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "seed": SEED}
    ref = direct(llama).completions.create(**args)
    gw, client = via
    plain = client.completions.create(**args)
    assert plain.choices[0].text == ref.choices[0].text
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (ref.usage.prompt_tokens,
                                                                          ref.usage.completion_tokens)
    chunks = list(client.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.choices[0].finish_reason
    events = gw.wait_events(2)
    assert sorted(e["streamed"] for e in events) == [0, 1]
    for event in events:
        assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"], event["status"]) == (
            ref.usage.prompt_tokens, ref.usage.completion_tokens, 0, 200)
        assert event["endpoint"] == "/v1/completions"


def test_embeddings(llama: LlamaServer, via: Via) -> None:
    texts = ["one two", "three"]
    ref = direct(llama).embeddings.create(model=MODEL_ALIAS, input=texts)
    gw, client = via
    reply = client.embeddings.create(model="smollm2-embed", input=texts)
    assert len(reply.data) == 2 and reply.data[1].embedding == ref.data[1].embedding
    assert reply.usage.prompt_tokens == ref.usage.prompt_tokens > 0
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"]) == (ref.usage.prompt_tokens, 0, 0)
    assert event["model"] == "smollm2-embed" and event["endpoint"] == "/v1/embeddings"


def test_a_prompt_longer_than_the_context_is_refused_in_the_servers_words(llama: LlamaServer, via: Via) -> None:
    too_long = [{"role": "user", "content": "word " * N_CTX}]
    with pytest.raises(openai.BadRequestError) as direct_refusal:
        direct(llama).chat.completions.create(**chat_args(too_long))
    said = direct_refusal.value.body["message"]
    assert f"maximum context length is {N_CTX} tokens" in said
    gw, client = via
    with pytest.raises(openai.BadRequestError) as refusal:
        client.chat.completions.create(**chat_args(too_long))
    assert refusal.value.status_code == 400
    assert refusal.value.body["message"] == said
    [event] = gw.wait_events(1)
    assert (event["status"], event["completion_tokens"]) == (400, 0)


def test_a_clients_own_request_id_does_not_upset_the_server(llama: LlamaServer, via: Via) -> None:
    """The server refuses, with an empty 400, any X-Request-Id that Python's uuid.UUID() cannot read
    (32 hex digits; hyphens, braces and a urn:uuid: prefix allowed): a client's own must not reach it."""
    gw, client = via
    reply = client.chat.completions.create(**chat_args(CAPITAL, max_tokens=2),
                                           extra_headers={"X-Request-Id": "client-trace-1"})
    assert reply.choices[0].message.content
    [event] = gw.wait_events(1)
    assert event["status"] == 200


def test_back_to_back_streams_all_complete(llama: LlamaServer, via: Via) -> None:
    """The server stops the stream it is generating when another request reaches it: it sends
    [DONE] with no finish_reason and drops the connection. The gateway's own after-stream counting
    requests must not cut the client's next stream short."""
    prompts = [CAPITAL, HAIKU, COLOURS]
    refs = [reference(llama, messages, 16) for messages in prompts]
    gw, client = via
    for messages, (text, reason, _, _) in zip(prompts, refs, strict=True):
        streamed, streamed_reason, _ = read_stream(client.chat.completions.create(**chat_args(messages, 16),
                                                                                  stream=True))
        assert streamed_reason == reason, f"a stream ended without its finish_reason after {streamed!r}"
        assert streamed == text
    events = gw.wait_events(3)
    assert [(e["status"], e["streamed"]) for e in events] == [(200, 1)] * 3
    for event, (_, _, prompt, completion) in zip(events, refs, strict=True):
        assert exact_or_flagged(event, prompt, completion), event


def test_concurrent_streams_on_a_queueing_server_all_complete(llama_queued: LlamaServer, start_gateway) -> None:
    prompts = [CAPITAL, HAIKU, COLOURS]
    refs = [reference(llama_queued, messages, 16) for messages in prompts]
    assert len({(p, c) for _, _, p, c in refs}) == len(refs), "each prompt's counts tell its event apart"
    gw, client = gateway_on(start_gateway, llama_queued)

    def one(messages: list[dict]) -> tuple[str, str | None]:
        streamed, reason, _ = read_stream(client.chat.completions.create(**chat_args(messages, 16), stream=True))
        return streamed, reason

    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(one, prompts))
    assert results == [(text, reason) for text, reason, _, _ in refs]
    events = gw.wait_events(3)
    assert [(e["status"], e["streamed"]) for e in events] == [(200, 1)] * 3
    exact = [(e["prompt_tokens"], e["completion_tokens"]) for e in events if not e["estimated"]]
    expected = [(p, c) for _, _, p, c in refs]
    assert all(exact.count(pair) <= expected.count(pair) for pair in exact), (exact, expected)
