"""`python -m bench.meter_cost`: what metering one stream costs the gateway, in this process.

Every stream the gateway relays passes through `StreamMeter`, chunk by chunk: this times it on
a chat stream shaped as the mock upstream (and vLLM) sends it, one event per token, in two
cases: with the usage chunk the gateway asked for (each event carries `"usage": null`, the
last holds the usage, which the meter strips), and without usage (llama-cpp-python), where the
meter keeps the events and reads the produced text out of them at the end for counting. Prints
µs per stream, the minimum of `--repeat` timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit

from llmgateway.usage.metering import StreamMeter


def chunks(tokens: int, usage: bool) -> list[bytes]:
    """The SSE events of one chat stream of `tokens` tokens, `[DONE]` last."""
    head = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764288000,' \
           b'"model":"m","system_fingerprint":"mock","choices":'
    tail = b',"usage":null}\n\n' if usage else b"}\n\n"
    events = []
    for i in range(tokens):
        choice = {"index": 0, "delta": {"content": f"word{i} "}, "logprobs": None,
                  "finish_reason": "stop" if i == tokens - 1 else None}
        events.append(head + json.dumps([choice], separators=(",", ":")).encode() + tail)
    if usage:
        numbers = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}
        events.append(head + b'[],"usage":' + json.dumps(numbers, separators=(",", ":")).encode() + b"}\n\n")
    return [*events, b"data: [DONE]\n\n"]


def stream_cost(events: list[bytes], usage: bool, repeat: int) -> float:
    """µs to meter the stream once, the best of `repeat` timings."""

    def meter() -> None:
        m = StreamMeter(strip_usage_chunk=usage)
        for event in events:
            m.feed(event)
        m.finish()
        if not usage:
            m.completion_text()

    number = 2000
    return round(min(timeit.repeat(meter, number=number, repeat=repeat)) / number * 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.meter_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=16, help="tokens (events) per stream [16]")
    parser.add_argument("--repeat", type=int, default=5, help="timings; the best counts [5]")
    args = parser.parse_args(argv)
    for usage in (True, False):
        cost = stream_cost(chunks(args.tokens, usage), usage, args.repeat)
        case = "with the usage chunk" if usage else "without usage, text read at the end"
        print(f"{args.tokens}-token stream {case}: {cost} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
