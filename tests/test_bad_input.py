"""Bad input at the OpenAI door: every refusal has the right status, OpenAI error body and SDK exception.

The gateway and the mock upstream run as real processes (see conftest.py); the client is the official
`openai` SDK, except where the SDK cannot send the bad input (then raw `http.client` on loopback).
Refusals before routing (400, 401, 403, 404, 413) must reach no upstream and record no usage event:
each test ends with one good "sentinel" call and checks that its event is the only one stored and its
request the only one the mock saw (the ledger flushes every event buffered before the sentinel's, so a
wrongly recorded refusal would show up beside it).
"""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import sys
from typing import Any

import openai
import pytest

from tests.conftest import ROOT, GatewayProcess, MockUpstream, http_json, model_toml, wait_for

ANY = object()
HELLO = [{"role": "user", "content": "Hello"}]


# --- helpers -----------------------------------------------------------------------------------------------


def check_error_body(body: Any, code: str | None, param: Any = ANY, type_: Any = ANY) -> dict:
    """`body` is exactly {"error": {...}} with all four OpenAI keys, and the expected code/param/type."""
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error body: {body!r}"
    err = body["error"]
    assert isinstance(err, dict)
    missing = {"message", "type", "param", "code"} - set(err)
    assert not missing, f"error body lacks {missing}: {body!r}"
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["type"], str) and err["type"], body
    assert err["code"] == code, body
    if param is not ANY:
        assert err["param"] == param, body
    if type_ is not ANY:
        assert err["type"] == type_, body
    return err


def sdk_error(call: Any, exc_class: type[openai.APIStatusError], status: int, code: str | None,
              param: Any = ANY) -> openai.APIStatusError:
    """Run an SDK call that must fail with `exc_class`/`status` and an OpenAI body with `code`/`param`."""
    with pytest.raises(openai.APIStatusError) as info:
        call()
    exc = info.value
    assert isinstance(exc, exc_class), f"expected {exc_class.__name__}, got {type(exc).__name__}: {exc}"
    assert exc.status_code == status, exc
    check_error_body(exc.response.json(), code, param)
    assert exc.code == code
    return exc


def refused_body(client: openai.OpenAI, body: Any, param: str | None) -> None:
    """POST `body` as is to /v1/chat/completions: 400 invalid_request naming `param`."""
    sdk_error(lambda: client.post("/chat/completions", body=body, cast_to=object),
              openai.BadRequestError, 400, "invalid_request", param)


def raw(gw: GatewayProcess, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these bytes and headers: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_raw_error(result: tuple[int, dict[str, str], bytes], status: int, code: str | None,
                    param: Any = ANY) -> dict:
    got, headers, data = result
    assert got == status, (got, data)
    assert headers.get("content-type", "").startswith("application/json"), headers
    return check_error_body(json.loads(data), code, param)


def sentinel(gw: GatewayProcess, mock: MockUpstream, key: str, model: str = "m") -> None:
    """One good call; then it must be the only usage event and the only request the upstream saw."""
    reply = gw.client(key).chat.completions.create(model=model, messages=HELLO)
    assert reply.choices[0].message.content.startswith("w0")
    events = gw.wait_events(1)
    assert events[0]["status"] == 200
    assert events[0]["model"] == model
    posts = [r for r in mock.requests() if r["method"] == "POST"]
    assert len(posts) == 1, [(r["path"], r["body"]) for r in posts]
    assert posts[0]["body"]["messages"] == HELLO


@pytest.fixture
def setup(start_mock, start_gateway) -> Any:
    """(mock, gateway, key) with chat model "m", completion model "c" and embedding model "e"."""

    def make(server: str = "") -> tuple[MockUpstream, GatewayProcess, str]:
        mock = start_mock()
        models = (model_toml("m", [mock.url]) + model_toml("c", [mock.url], kind="completion")
                  + model_toml("e", [mock.url], kind="embedding"))
        gw = start_gateway(models, server=server)
        return mock, gw, gw.create_key()

    return make


# --- bodies ------------------------------------------------------------------------------------------------


def test_body_that_is_not_a_json_object(setup, subtests) -> None:
    mock, gw, key = setup()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with subtests.test("malformed JSON"):
        result = raw(gw, "POST", "/v1/chat/completions", b'{"model": "m", "messages": [', auth)
        check_raw_error(result, 400, "invalid_request", None)
    client = gw.client(key)
    for name, body in [("array", [{"model": "m"}]), ("number", 42), ("string", "model m")]:
        with subtests.test(f"JSON {name}"):
            refused_body(client, body, None)
    sentinel(gw, mock, key)


def test_model_missing_or_not_a_string(setup, subtests) -> None:
    mock, gw, key = setup()
    client = gw.client(key)
    cases = [("missing", {"messages": HELLO}), ("number", {"model": 7, "messages": HELLO}),
             ("null", {"model": None, "messages": HELLO}), ("list", {"model": ["m"], "messages": HELLO})]
    for name, body in cases:
        with subtests.test(f"model {name}"):
            refused_body(client, body, "model")
    sentinel(gw, mock, key)


def test_stream_fields_of_the_wrong_type(setup, subtests) -> None:
    mock, gw, key = setup()
    client = gw.client(key)
    cases = [
        ("stream", {"stream": "yes"}, "stream"),
        ("stream_options", {"stream": True, "stream_options": "include_usage"}, "stream_options"),
        ("stream_options list", {"stream": True, "stream_options": [True]}, "stream_options"),
        ("include_usage", {"stream": True, "stream_options": {"include_usage": "yes"}},
         "stream_options.include_usage"),
    ]
    for name, extra, param in cases:
        with subtests.test(name):
            refused_body(client, {"model": "m", "messages": HELLO, **extra}, param)
    sentinel(gw, mock, key)


def test_max_tokens_negative_or_a_string(setup, subtests) -> None:
    mock, gw, key = setup()
    client = gw.client(key)
    for value in (-1, "10", 1.5):
        with subtests.test(f"max_tokens={value!r}"):
            sdk_error(lambda value=value: client.chat.completions.create(model="m", messages=HELLO, max_tokens=value),
                      openai.BadRequestError, 400, "invalid_request", "max_tokens")
    sentinel(gw, mock, key)


def test_required_inputs_missing_or_empty(setup, subtests) -> None:
    mock, gw, key = setup()
    client = gw.client(key)
    cases = [
        ("chat without messages", "/chat/completions", {"model": "m"}, "messages"),
        ("chat with empty messages", "/chat/completions", {"model": "m", "messages": []}, "messages"),
        ("chat with messages not a list", "/chat/completions", {"model": "m", "messages": "hi"}, "messages"),
        ("completions without prompt", "/completions", {"model": "c"}, "prompt"),
        ("embeddings without input", "/embeddings", {"model": "e"}, "input"),
    ]
    for name, path, body, param in cases:
        with subtests.test(name):
            sdk_error(lambda path=path, body=body: client.post(path, body=body, cast_to=object),
                      openai.BadRequestError, 400, "invalid_request", param)
    with subtests.test("chat with empty messages, typed SDK call"):
        sdk_error(lambda: client.chat.completions.create(model="m", messages=[]),
                  openai.BadRequestError, 400, "invalid_request", "messages")
    sentinel(gw, mock, key)


def test_body_over_the_limit_is_413_and_at_the_limit_is_accepted(setup) -> None:
    limit = 2048
    mock, gw, key = setup(server=f"max_body_bytes = {limit}")
    client = gw.client(key)
    big = [{"role": "user", "content": "x" * 3000}]
    exc = sdk_error(lambda: client.chat.completions.create(model="m", messages=big),
                    openai.APIStatusError, 413, "request_too_large")
    assert type(exc) is openai.APIStatusError
    # Far over the limit still gets a clean 413 (the body is drained, not a dropped connection).
    huge = json.dumps({"model": "m", "messages": [{"role": "user", "content": "y" * 200_000}]}).encode()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    check_raw_error(raw(gw, "POST", "/v1/chat/completions", huge, auth), 413, "request_too_large")

    def body_of(size: int) -> bytes:
        head = json.dumps({"model": "m", "messages": [{"role": "user", "content": ""}]}).encode()
        data = head.replace(b'"content": ""', b'"content": "' + b"z" * (size - len(head)) + b'"')
        assert len(data) == size
        return data

    check_raw_error(raw(gw, "POST", "/v1/chat/completions", body_of(limit + 1), auth), 413, "request_too_large")
    status, headers, data = raw(gw, "POST", "/v1/chat/completions", body_of(limit), auth)
    assert status == 200, data
    assert json.loads(data)["object"] == "chat.completion"
    events = gw.wait_events(1)
    assert events[0]["status"] == 200 and events[0]["request_id"] == headers["x-request-id"]
    posts = [r for r in mock.requests() if r["method"] == "POST"]
    assert len(posts) == 1


# --- models ------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(setup) -> None:
    mock, gw, key = setup()
    client = gw.client(key)
    sdk_error(lambda: client.chat.completions.create(model="no-such-model", messages=HELLO),
              openai.NotFoundError, 404, "model_not_found", "model")
    sdk_error(lambda: client.chat.completions.create(model="no-such-model", messages=HELLO, stream=True),
              openai.NotFoundError, 404, "model_not_found", "model")
    sentinel(gw, mock, key)


def test_model_not_on_the_keys_list(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("a", [mock.url]) + model_toml("b", [mock.url]))
    key = gw.create_key(models="a")
    client = gw.client(key)
    sdk_error(lambda: client.chat.completions.create(model="b", messages=HELLO),
              openai.PermissionDeniedError, 403, "model_not_allowed", "model")
    sdk_error(lambda: client.chat.completions.create(model="b", messages=HELLO, stream=True),
              openai.PermissionDeniedError, 403, "model_not_allowed", "model")
    assert [m.id for m in client.models.list()] == ["a"]
    assert client.models.retrieve("a").id == "a"
    sdk_error(lambda: client.models.retrieve("b"), openai.PermissionDeniedError, 403, "model_not_allowed", "model")
    sdk_error(lambda: client.models.retrieve("zzz"), openai.NotFoundError, 404, "model_not_found", "model")
    # A key without a list sees both.
    assert sorted(m.id for m in gw.client(gw.create_key(name="all")).models.list()) == ["a", "b"]
    sentinel(gw, mock, key, model="a")


# --- keys --------------------------------------------------------------------------------------------------


def unknown_key() -> str:
    return "sk-lgw-" + secrets.token_urlsafe(32)


def test_no_or_malformed_authorization_is_401(setup, subtests) -> None:
    mock, gw, key = setup()
    body = json.dumps({"model": "m", "messages": HELLO}).encode()
    with subtests.test("no Authorization header (raw)"):
        result = raw(gw, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        check_raw_error(result, 401, "missing_api_key", None)
    with subtests.test("no Authorization header (SDK)"):
        client = gw.client("unused")
        sdk_error(lambda: client.chat.completions.create(model="m", messages=HELLO,
                                                         extra_headers={"Authorization": openai.Omit()}),
                  openai.AuthenticationError, 401, "missing_api_key")
    # README: "no key, malformed Authorization" -> missing_api_key or invalid_api_key; both are 401.
    for name, header in [("Basic", "Basic dXNlcjpwYXNzd29yZA=="), ("Bearer with nothing after", "Bearer "),
                         ("Basic with a real key", f"Basic {key}")]:
        with subtests.test(name):
            status, _, data = raw(gw, "POST", "/v1/chat/completions", body,
                                  {"Authorization": header, "Content-Type": "application/json"})
            assert status == 401, data
            err = check_error_body(json.loads(data), json.loads(data)["error"]["code"])
            assert err["code"] in ("missing_api_key", "invalid_api_key"), err
            if header.startswith("Basic"):
                assert "Bearer YOUR_KEY" in err["message"] and "didn't provide" not in err["message"], err
                assert key not in err["message"]
    for name, bad in [("wrong shape", "sk-wrong"), ("too short", "sk-lgw-abc"), ("well-formed unknown", unknown_key())]:
        with subtests.test(name):
            sdk_error(lambda bad=bad: gw.client(bad).chat.completions.create(model="m", messages=HELLO),
                      openai.AuthenticationError, 401, "invalid_api_key")
    with subtests.test("unknown key on /v1/models"):
        sdk_error(lambda: gw.client(unknown_key()).models.list(), openai.AuthenticationError, 401, "invalid_api_key")
    sentinel(gw, mock, key)


def test_revoked_key_is_401(setup) -> None:
    mock, gw, good = setup()
    doomed = gw.create_key(name="doomed")
    rows = json.loads(gw.cli("keys", "list", "--json").stdout)
    [row] = [r for r in rows if r["name"] == "doomed"]
    assert doomed.startswith(row["prefix"])
    gw.cli("keys", "revoke", row["id"])
    client = gw.client(doomed)
    sdk_error(lambda: client.chat.completions.create(model="m", messages=HELLO),
              openai.AuthenticationError, 401, "revoked_api_key")
    sdk_error(lambda: client.models.list(), openai.AuthenticationError, 401, "revoked_api_key")
    sentinel(gw, mock, good)


def test_expired_key_is_401(setup) -> None:
    mock, gw, good = setup()
    short = gw.create_key(name="short", expires_days=0.00001)  # 0.864 s
    client = gw.client(short)
    successes = 0

    def refused() -> openai.AuthenticationError | None:
        nonlocal successes
        try:
            client.chat.completions.create(model="m", messages=HELLO)
        except openai.AuthenticationError as exc:
            return exc
        successes += 1
        return None

    exc = wait_for(refused, 5, interval=0.05, what="the short-lived key to be refused")
    assert exc.status_code == 401
    check_error_body(exc.response.json(), "expired_api_key")
    sdk_error(lambda: client.models.list(), openai.AuthenticationError, 401, "expired_api_key")
    # Only the successful calls (before expiry) and the sentinel below are metered.
    gw.client(good).chat.completions.create(model="m", messages=HELLO)
    events = gw.wait_events(successes + 1)
    assert all(e["status"] == 200 for e in events)


# --- methods and paths -------------------------------------------------------------------------------------


def test_wrong_method_is_405_with_a_json_error(setup) -> None:
    mock, gw, key = setup()
    result = raw(gw, "GET", "/v1/chat/completions", None, {"Authorization": f"Bearer {key}"})
    check_raw_error(result, 405, "method_not_allowed")
    assert result[1]["allow"] == "POST"
    with pytest.raises(openai.APIStatusError) as info:
        gw.client(key).get("/chat/completions", cast_to=object)
    assert info.value.status_code == 405
    check_error_body(info.value.response.json(), "method_not_allowed")
    result = raw(gw, "POST", "/v1/models", b"{}", {"Authorization": f"Bearer {key}"})
    check_raw_error(result, 405, "method_not_allowed")
    assert result[1]["allow"] == "GET"
    sentinel(gw, mock, key)


def test_unknown_path_is_404_with_a_json_error(setup) -> None:
    mock, gw, key = setup()
    for method in ("GET", "POST"):
        result = raw(gw, method, "/nope", b"{}" if method == "POST" else None, {"Authorization": f"Bearer {key}"})
        check_raw_error(result, 404, "unknown_path")
    status, body = http_json("GET", gw.url + "/v2/models")
    assert status == 404
    check_error_body(body, "unknown_path")
    for path in ("/v1/nope", "/v1/chat/completion"):
        check_raw_error(raw(gw, "GET", path, None, {"Authorization": f"Bearer {key}"}), 404, "unknown_path")
    sentinel(gw, mock, key)


def test_a_key_in_the_query_string_never_reaches_the_log(setup) -> None:
    """Some clients put keys in URLs; refusals of such calls must not log them."""
    mock, gw, key = setup()
    for method, path in (("GET", "/v1/chat/completions"), ("POST", "/v1/chat/completions"), ("GET", "/nope")):
        status, _, _ = raw(gw, method, f"{path}?api_key={key}", b"{" if method == "POST" else None)
        assert status in (401, 404, 405)
    sentinel(gw, mock, key)
    wait_for(lambda: "/nope" in gw.log(), 5, what="the access lines")
    assert key not in gw.log() and "api_key" not in gw.log()


# --- secrets -----------------------------------------------------------------------------------------------


SECRET = "upstream-secret"


def test_upstream_secret_goes_up_and_never_back_and_client_credentials_never_go_up(start_mock, start_gateway) -> None:
    mock = start_mock("--api-key", SECRET)
    gw = start_gateway(model_toml("m", [mock.url], api_key_env="UP_SECRET"), env={"UP_SECRET": SECRET})
    key = gw.create_key()
    client = gw.client(key, default_headers={"Cookie": "session=client-cookie-123", "X-Api-Key": key})

    raw_reply = client.chat.completions.with_raw_response.create(model="m", messages=HELLO)
    reply = raw_reply.parse()
    assert reply.choices[0].message.content.startswith("w0")
    texts = [raw_reply.http_response.text, str(raw_reply.headers)]
    with client.chat.completions.with_streaming_response.create(model="m", messages=HELLO, stream=True) as resp:
        assert resp.status_code == 200
        texts += [resp.http_response.read().decode(), str(resp.headers)]
    assert "w0" in texts[2] and "[DONE]" in texts[2]
    # An upstream error relayed back (its message passes through) must not carry the secret either.
    exc = sdk_error(lambda: client.chat.completions.create(model="m", messages=HELLO,
                                                           extra_body={"mock": {"mode": "status", "status": 400}}),
                    openai.BadRequestError, 400, "upstream_400")
    texts += [exc.response.text, str(exc.response.headers)]
    for text in texts:
        assert SECRET not in text

    posts = [r for r in mock.requests() if r["method"] == "POST" and r["path"].startswith("/v1/")]
    assert len(posts) == 3
    for r in posts:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert headers.get("authorization") == f"Bearer {SECRET}", headers
        assert "cookie" not in headers, headers
        assert not any(key in v for v in headers.values()), headers
        assert not any("client-cookie-123" in v for v in headers.values()), headers

    gw.wait_events(3)
    log = gw.log()
    assert "POST /v1/chat/completions" in log  # the access log is there, so the check below means something
    assert key not in log
    assert key[7:] not in log
    assert SECRET not in log


def test_missing_upstream_secret_stops_the_start(start_gateway) -> None:
    gw = start_gateway(model_toml("m", ["http://127.0.0.1:9"], api_key_env="UP_SECRET"), run=False)
    gw.env.pop("UP_SECRET", None)
    with pytest.raises(AssertionError) as info:
        gw.start()
    assert gw.proc is not None and gw.proc.returncode == 2
    assert "UP_SECRET" in str(info.value)
    assert "not set" in str(info.value)
    result = subprocess.run([sys.executable, "-m", "llmgateway", "serve", "--config", str(gw.config_path)],
                            cwd=ROOT, env=gw.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "UP_SECRET" in line]
    assert len(lines) == 1 and "api_key_env" in lines[0], result.stderr
