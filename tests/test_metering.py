"""StreamMeter on real SSE bytes cut at every possible place, as networks cut them."""

from __future__ import annotations

import json

import pytest

from llmgateway.usage.metering import StreamMeter, choice_text, find_usage


def event(obj: object, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + sep


def chunks(words: list[str], usage_null: bool) -> list[bytes]:
    out = []
    for w in words:
        obj: dict = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}}]}
        if usage_null:
            obj["usage"] = None
        out.append(event(obj))
    return out


USAGE = event({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


def relay(meter: StreamMeter, stream: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(stream), size):
        out += meter.feed(stream[i:i + size])
    return out + meter.finish()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 17, 64, 10_000])
def test_usage_chunk_is_found_and_stripped_at_any_split(size: int) -> None:
    body = b"".join(chunks(["a", " b", " c"], usage_null=True))
    stream = body + USAGE + DONE
    meter = StreamMeter(strip_usage_chunk=True)
    assert relay(meter, stream, size) == body + DONE
    assert meter.usage == (7, 3)


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_bytes_pass_unchanged_when_client_asked_for_usage(size: int) -> None:
    stream = b"".join(chunks(["a", " b"], usage_null=True)) + USAGE + DONE
    meter = StreamMeter(strip_usage_chunk=False)
    assert relay(meter, stream, size) == stream
    assert meter.usage == (7, 3)


def test_stream_without_usage_keeps_the_text_for_counting() -> None:
    stream = b"".join(chunks(["w0", " w1", " w2"], usage_null=False)) + DONE
    meter = StreamMeter(strip_usage_chunk=True)
    assert relay(meter, stream, 3) == stream
    assert meter.usage is None
    assert meter.completion_text() == "w0 w1 w2"


def test_crlf_separated_events() -> None:
    stream = event({"choices": [{"delta": {"content": "x"}}]}, b"\r\n\r\n") + USAGE.replace(b"\n\n", b"\r\n\r\n")
    meter = StreamMeter(strip_usage_chunk=True)
    out = relay(meter, stream, 4)
    assert meter.usage == (7, 3)
    assert b"usage" not in out and b'"x"' in out


def test_stream_cut_without_final_blank_line_still_relays_the_tail() -> None:
    stream = event({"choices": [{"delta": {"content": "x"}}]}) + b'data: {"choices": [{"delta": {"content": "y"}}]}'
    meter = StreamMeter(strip_usage_chunk=True)
    assert relay(meter, stream, 5) == stream
    assert meter.completion_text() == "xy"


def test_long_stream_text_is_compacted_not_lost() -> None:
    words = [f" w{i}" for i in range(40_000)]
    meter = StreamMeter(strip_usage_chunk=False)
    for c in chunks(words, usage_null=False):
        meter.feed(c)
    meter.finish()
    assert meter.completion_text() == "".join(words)


def test_usage_shapes() -> None:
    assert find_usage({"usage": {"prompt_tokens": 2, "completion_tokens": 5}}) == (2, 5)
    assert find_usage({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == (4, 0)
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 1}}}
    assert find_usage(completed) == (3, 1)
    assert find_usage({"usage": None}) is None
    assert find_usage({"usage": {"prompt_tokens": "2"}}) is None


def test_choice_text_covers_content_reasoning_and_tool_calls() -> None:
    obj = {"choices": [{"message": {"content": "a", "reasoning_content": "b",
                                    "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]}
    assert choice_text(obj) == "abf{}"
    assert choice_text({"choices": [{"text": "t"}]}) == "t"


@pytest.mark.parametrize("size", [1, 2, 5, 13, 10_000])
def test_the_end_of_the_stream_is_seen_at_any_split_and_only_at_a_line_start(size: int) -> None:
    body = b"".join(chunks(["data: [DONE]", " b"], usage_null=False))
    meter = StreamMeter(strip_usage_chunk=False)
    relay(meter, body, size)
    assert not meter.done, "a [DONE] inside the generated text is not the end of the stream"
    meter = StreamMeter(strip_usage_chunk=True)
    relay(meter, body + USAGE + DONE, size)
    assert meter.done


def test_events_only_the_standard_library_reads_are_still_counted() -> None:
    """Events are read with orjson first: what it refuses and the standard library reads (NaN,
    a lone surrogate, UTF-16) keeps its text, as before; so does an event whose JSON is split
    over several `data:` lines."""
    odd = [b'data: {"choices": [{"delta": {"content": "a"}, "logprob": NaN}]}\n\n',
           b'data: {"choices": [{"delta": {"content": "b\\ud800"}}]}\n\n',
           b'data: {"choices": [{"delta": {"content": "c"}}]}\n\n',
           b"data: " + '{"choices": [{"delta": {"content": "d"}}]}'.encode("utf-16") + b"\n\n",
           b'data: {"choices": [{"delta":\ndata: {"content": "e"}}]}\r\n\r\n']
    meter = StreamMeter(strip_usage_chunk=True)
    stream = b"".join(odd) + DONE
    assert relay(meter, stream, 7) == stream
    assert meter.completion_text() == "ab\ud800cde"
