"""`server.log_format = "json"`: every line of a real gateway's log is one JSON object with the
promised fields, and no line carries a key, an upstream secret or a cookie."""

from __future__ import annotations

import json
import signal

import openai
import pytest

from tests.conftest import model_toml, wait_for
from tests.test_hostile import raw_exchange, status_of

HELLO = [{"role": "user", "content": "Hello"}]
SECRET = "sk-upstream-RIGHT-0123456789abcdef"
WRONG = "sk-upstream-WRONG-fedcba9876543210"
COOKIE = "cookie-value-that-must-stay-secret-42"
FIELDS = {"time", "level", "logger", "message", "request_id"}
ACCESS = {"method", "path", "status", "duration_ms", "model", "user_id", "key_id"}


def test_json_log_lines_carry_the_fields_and_no_secret(start_mock, start_gateway) -> None:
    mock = start_mock("--api-key", SECRET)
    gw = start_gateway(model_toml("m", [mock.url], api_key_env="UP_KEY")
                       + model_toml("wrong", [mock.url], api_key_env="WRONG_KEY"),
                       server='log_format = "json"', env={"UP_KEY": SECRET, "WRONG_KEY": WRONG})
    key = gw.create_key("alice")
    client = gw.client(key, default_headers={"Cookie": f"llmgw_session={COOKIE}"})
    raw = client.chat.completions.with_raw_response.create(model="m", messages=HELLO, max_tokens=2)
    request_id = raw.headers["x-request-id"]
    list(client.chat.completions.create(model="m", messages=HELLO, max_tokens=2, stream=True))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="wrong", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        gw.client(key[:-4] + "zzzz").chat.completions.create(model="m", messages=HELLO)
    for bad in (f"Authorization: Bearer {key}\x01\r\n", f"Cookie: llmgw_session={COOKIE}\x01\r\n"):
        raw_exchange(gw.port, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{bad}Content-Length: 2\r\n\r\n{{}}"
                     .encode())
    answer = raw_exchange(gw.port, f"GET /v1/models?key={key} HTTP/1.1\r\nHost: x\r\nCookie: s={COOKIE}\r\n\r\n"
                          .encode())
    assert status_of(answer) == 401
    wait_for(lambda: "refused the gateway's upstream credentials" in gw.log(), what="the operator's line")
    assert gw.stop(signal.SIGTERM) == 0

    text = gw.log()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) >= 8
    for line in lines:
        assert isinstance(line, dict) and set(line) >= FIELDS, line
    access = [line for line in lines if line["logger"] == "llmgateway.access" and "method" in line]
    for line in access:
        assert set(line) >= ACCESS, line
    served = [line for line in access if line["status"] == 200 and line["path"] == "/v1/chat/completions"]
    assert len(served) == 2
    assert request_id in {line["request_id"] for line in served}
    for line in served:
        assert line["method"] == "POST" and line["model"] == "m" and line["user_id"] == "alice"
        assert line["key_id"].startswith("key_") and line["duration_ms"] > 0
        assert len(line["request_id"]) == 36
    refused = [line for line in access if line["status"] == 401]
    assert refused and all(line["user_id"] is None and line["key_id"] is None for line in refused)
    assert any("Malformed HTTP" in line["message"] for line in lines)
    assert any(line["level"] == "ERROR" and "upstream credentials" in line["message"] for line in lines)

    for secret in (key, key[7:20], key[-12:], SECRET, SECRET[-10:], WRONG, WRONG[-10:], COOKIE):
        assert secret not in text, secret
