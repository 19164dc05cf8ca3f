"""What counting a stream without usage sends the upstream, and what it keeps exact.

The count after a stream needs the prompt again; the gateway keeps it (as the payload the
transfer holds anyway) and parses it again only then. A server whose one-token probe answers
without usage is not sent every prompt again to learn nothing.
"""

from __future__ import annotations

from tests.conftest import model_toml
from tests.test_proxy import MESSAGES, chat_prompt_tokens

LONG = [{"role": "system", "content": "Answer from the context.\n" + "def f(x):\n    return \"x\\\\\" + x\n" * 2000},
        {"role": "user", "content": "caf\u00e9, \u6771\u4eac: what does f do?"}]


def probes(mock) -> list[dict]:
    return [r for r in mock.requests() if r["path"] == "/v1/chat/completions" and r["body"].get("max_tokens") == 1]


def test_a_large_prompt_streamed_without_usage_is_counted_exactly(start_mock, start_gateway) -> None:
    """The parse let go during the stream comes back from the payload: the probe carries the
    messages the upstream got, and the count equals the upstream's own."""
    mock = start_mock("--usage-chunk", "off", "--tokenize", "llamacpp")
    gw = start_gateway(model_toml("m", [mock.url], upstream_model="up"))
    client = gw.client(gw.create_key())
    chunks = list(client.chat.completions.create(model="m", messages=LONG, max_tokens=6, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
    [event] = gw.wait_events(1)
    assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"]) == (chat_prompt_tokens(LONG), 6, 0)
    [probe] = probes(mock)
    assert probe["body"]["messages"] == LONG and probe["body"]["model"] == "up"


def test_a_probe_that_answers_without_usage_is_not_sent_again(start_mock, start_gateway) -> None:
    mock = start_mock("--usage-chunk", "off", "--usage-body", "off", "--tokenize", "none")
    gw = start_gateway(model_toml("m", [mock.url]))
    client = gw.client(gw.create_key())
    for n in (1, 2):
        list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3, stream=True))
        events = gw.wait_events(n)
    assert [e["estimated"] for e in events] == [1, 1]
    assert len(probes(mock)) == 1


def test_a_probe_that_answers_with_usage_is_sent_for_every_call(start_mock, start_gateway) -> None:
    """Only an answer without usage teaches the gateway to skip the probe."""
    mock = start_mock("--usage-chunk", "off", "--tokenize", "llamacpp")
    gw = start_gateway(model_toml("m", [mock.url]))
    client = gw.client(gw.create_key())
    for n in (1, 2):
        list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3, stream=True))
        events = gw.wait_events(n)
    assert [(e["prompt_tokens"], e["estimated"]) for e in events] == [(chat_prompt_tokens(MESSAGES), 0)] * 2
    assert len(probes(mock)) == 2
