"""What the upstream reads is what the gateway checked, byte for byte where bytes will do.

The gateway adds `stream_options` by splicing it in front of the client's bytes, and renames the
model by writing its parse again. Hostile bodies (keys nested in messages, escaped quotes and key
names, duplicate keys, odd whitespace, unicode) go through it raw; the mock logs the bytes it
received, which must read the same to a parser that keeps the first of duplicate keys and to one
that keeps the last, and equal the body the gateway checked.
"""

from __future__ import annotations

import http.client
import json

import pytest

from tests.conftest import model_toml

ASK = b'{"stream_options":{"include_usage":true},'
MESSAGES = b'[{"role":"user","content":"hi"}]'


def first_wins(raw: str) -> object:
    return json.loads(raw, object_pairs_hook=lambda pairs: dict(reversed(pairs)))


@pytest.fixture
def setup(start_mock, start_gateway):
    """A mock, a gateway with a model under its upstream's own name (`same`) and a renamed one
    (`short`, `org/Long-Model` upstream), and a key for `short` only."""
    mock = start_mock()
    models = model_toml("same", [mock.url]) + model_toml("short", [mock.url], upstream_model="org/Long-Model")
    gw = start_gateway(models)
    return mock, gw, gw.create_key(), gw.create_key(models="short")


def post(port: int, key: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def received(mock) -> str:
    """The bytes (as text) of the last chat call the mock received."""
    return [r for r in mock.requests() if r["path"] == "/v1/chat/completions"][-1]["raw"]


SPLICED = {
    "plain": b'{"model":"same","messages":' + MESSAGES + b',"stream":true}',
    "nested keys": b'{"messages":[{"role":"user","content":"hi","model":"x","stream_options":{"include_usage":false}}],'
                   b'"model":"same","stream":true}',
    "escaped quotes": b'{"model":"same","messages":[{"role":"user","content":"say \\"model\\": \\"x\\", '
                      b'\\"stream_options\\": null \\\\"}],"stream":true}',
    "whitespace": b' \r\n\t{ \n "model" : "same" ,\n "messages" : ' + MESSAGES + b' , "stream" :true }\n',
    "unicode": '{"model":"same","messages":[{"role":"user","content":"caf\u00e9 \u6771\u4eac \\u00e9\\ud83d\\ude00"}],'
               '"stream":true}'.encode(),
}


@pytest.mark.parametrize("shape", sorted(SPLICED))
def test_a_stream_gets_include_usage_spliced_into_the_clients_own_bytes(setup, shape: str) -> None:
    mock, gw, key, _ = setup
    sent = SPLICED[shape]
    status, _ = post(gw.port, key, sent)
    assert status == 200
    got = received(mock).encode()
    start = len(sent) - len(sent.lstrip(b" \t\r\n"))
    assert got == sent[:start] + ASK + sent[start + 1:]
    checked = json.loads(sent) | {"stream_options": {"include_usage": True}}
    assert json.loads(got) == first_wins(got.decode()) == checked


RENAMED = {
    "nested model keys": b'{"messages":[{"role":"user","content":"hi","model":"same"}],"model":"short",'
                         b'"tools":[{"type":"function","function":{"name":"f","parameters":{"model":"same"}}}]}',
    "escaped key": b'{"mod\\u0065l":"short","messages":[{"role":"user","content":"\\"model\\":\\"same\\""}]}',
    "duplicate model": b'{"model":"same","messages":' + MESSAGES + b',"model":"short"}',
    "duplicate escaped model": b'{"model":"same","messages":' + MESSAGES + b',"m\\u006fdel":"short"}',
    "duplicate stream_options": b'{"model":"short","messages":' + MESSAGES + b',"stream":true,'
                                b'"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}',
    "stream_options null": b'{"model":"short","messages":' + MESSAGES + b',"stream":true,"stream_options":null}',
}


@pytest.mark.parametrize("shape", sorted(RENAMED))
def test_a_renamed_model_is_the_only_model_every_parser_reads(setup, shape: str) -> None:
    """The key may use `short` only: a duplicate naming `same` must not reach the upstream."""
    mock, gw, _, key = setup
    sent = RENAMED[shape]
    status, answer = post(gw.port, key, sent)
    assert status == 200, answer
    got = received(mock)
    checked = json.loads(sent) | {"model": "org/Long-Model"}
    if checked.get("stream"):
        checked["stream_options"] = {"include_usage": True}
    assert json.loads(got) == first_wins(got) == checked


def test_a_body_that_needs_no_change_goes_up_as_sent(setup) -> None:
    mock, gw, key, _ = setup
    sent = b'{ "model": "same", "messages": [{"role": "user", "content": "\\u00e9 1e2"}], "temperature": 1E0 }'
    assert post(gw.port, key, sent)[0] == 200
    assert received(mock).encode() == sent


def test_a_byte_order_mark_is_dropped(setup) -> None:
    mock, gw, key, _ = setup
    sent = b'{"model":"same","messages":' + MESSAGES + b"}"
    assert post(gw.port, key, b"\xef\xbb\xbf" + sent)[0] == 200
    assert received(mock).encode() == sent


@pytest.mark.parametrize("body", [
    b'{"model":"same","messages":' + MESSAGES + b',"temperature":NaN}',
    b'{"model":"same","messages":' + MESSAGES + b',"temperature":Infinity}',
    b'{"model":"same","messages":[{"role":"user","content":"\\ud800"}]}',
    b'{"model":"same","messages":' + MESSAGES + b',"user":"\\udc00"}',
    '{"model":"same","messages":[]}'.encode("utf-16"),
    b'{"model":"same","messages":[{"role":"user","content":"\xff\xfe"}]}',
    b'{"model":"same","messages":[{"role":"user","content":"\xc0\xa2}]}',
    b'{"model":"same","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
    b'{"model":"same","messages":[{"role":"user","content":"a\x01b"}]}',
], ids=["NaN", "Infinity", "lone surrogate", "lone surrogate elsewhere", "UTF-16", "invalid UTF-8",
        "overlong quote", "encoded surrogate", "control character"])
def test_what_is_not_json_is_a_400_and_never_goes_up(setup, body: bytes) -> None:
    mock, gw, key, _ = setup
    status, answer = post(gw.port, key, body)
    assert status == 400
    assert "not valid JSON" in json.loads(answer)["error"]["message"]
    assert [r for r in mock.requests() if r["path"] == "/v1/chat/completions"] == []


@pytest.mark.parametrize("sent,status", [
    (b'{"model":"same","m\\u0065ssages":' + MESSAGES + b"}", 200),
    (b'{"model":"same","messages":[],"messages":' + MESSAGES + b"}", 200),
    (b'{"model":"same","messages":' + MESSAGES + b',"messages":[ ]}', 400),
    (b'{"model":"same","messages":' + MESSAGES + b',"messages":"hi"}', 400),
    (b'{"model":"same","messages":' + MESSAGES + b',"m\\u0065ssages":null}', 400),
], ids=["escaped name", "last of two is good", "last of two is empty", "last of two is text", "last is null"])
def test_the_prompt_checked_is_the_one_the_upstream_reads(setup, sent: bytes, status: int) -> None:
    """The prompt is kept as raw JSON, not parsed: its member is still found under any spelling,
    the last of duplicates wins (as in the upstream's parser), and its type is checked."""
    mock, gw, key, _ = setup
    code, answer = post(gw.port, key, sent)
    assert code == status, answer
    calls = [r for r in mock.requests() if r["path"] == "/v1/chat/completions"]
    if status == 400:
        assert json.loads(answer)["error"]["param"] == "messages" and calls == []
    else:
        assert calls[-1]["raw"].encode() == sent
