"""A hostile key holder against the request path: what the upstream actually receives.

Every test reads the mock upstream's request log (the request line and headers as they reached
it), not only the status the client got: a refusal that still reached the upstream is a leak.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.admin_client import BOOTSTRAP, first_admin
from tests.conftest import GatewayProcess, MockUpstream, model_toml, wait_for

HELLO = [{"role": "user", "content": "Hello"}]

# Request targets that are not plain: each could reach another model's path (on the seed layout,
# models live at <default_url>/<model>/v1/...), or hide a chat call from being metered as chat.
TRICKS = [
    "/v1/../modelb/v1/chat/completions",
    "/v1/chat/../../modelb/v1/chat/completions",
    "/v1/%2e%2e/%2e%2e/modelb/v1/chat/completions",
    "/v1/%2E%2E/modelb/v1/chat/completions",
    "/v1/.%2e/modelb/v1/chat/completions",
    "/v1/%252e%252e/%252e%252e/modelb/v1/chat/completions",
    "/v1/chat%2fcompletions",
    "/v1/chat%2F..%2F..%2Fmodelb%2Fv1%2Fchat%2Fcompletions",
    "/v1/./chat/completions",
    "/v1/chat/./completions",
    "/v1/chat/completions/.",
    "/v1//chat/completions",
    "/v1/chat/completions/",
    "/v1/chat/completions%3Fx=1",
    "/v1/chat/completions%23frag",
    "/v1/chat/completions%00",
    "/v1/chat/completions%20",
    "/v1/%63hat/completions",
    "/v1/chat/completions;x=1",
    "/v1/chat\\completions",
    "/v1/chat/completions%",
]


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send exactly `data`, return everything read until the server closes or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        return read_answer(conn, timeout)


def read_answer(conn: socket.socket, timeout: float) -> bytes:
    """One response: headers, then Content-Length bytes of body (or up to the close)."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def error_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])["error"]


def post_raw(gw: GatewayProcess, target: str, body: dict, key: str, extra: str = "") -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra}\r\n")
    return raw_exchange(gw.port, head.encode() + payload)


@pytest.fixture
def seed(start_mock: Callable[..., MockUpstream], start_gateway: Callable[..., GatewayProcess]
         ) -> tuple[MockUpstream, GatewayProcess, str]:
    """The seed layout: models at <default_url>/<model>/v1/..., and a key for `modela` only,
    limited to one call at a time (so a leaked reservation would refuse the next call)."""
    mock = start_mock()
    gw = start_gateway('[[models]]\nid = "modela"\n[[models]]\nid = "modelb"\n',
                       extra=f'[upstream]\ndefault_url = "{mock.url}"\n[limits.key]\nconcurrent_requests = 1\n')
    return mock, gw, gw.create_key("mallory", models="modela")


@pytest.mark.parametrize("stream", [False, True])
def test_paths_that_are_not_plain_never_reach_an_upstream(seed, stream: bool) -> None:
    mock, gw, key = seed
    for target in TRICKS:
        answer = post_raw(gw, target, {"model": "modela", "messages": HELLO, "stream": stream}, key)
        assert status_of(answer) in (400, 404), (target, answer[:300])
        assert error_of(answer)["code"] in ("invalid_request", "unknown_path"), target
    assert mock.requests() == [], "a refused path reached the upstream"
    assert gw.events() == []
    reply = gw.client(key).chat.completions.create(model="modela", messages=HELLO, stream=stream)
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices).startswith("w0")
    [received] = mock.requests()
    assert received["raw_path"] == "/modela/v1/chat/completions"
    [event] = gw.wait_events(1)
    assert event["status"] == 200 and event["estimated"] == 0 and event["endpoint"] == "/v1/chat/completions"


def test_another_models_path_is_not_reachable_on_per_model_upstreams(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("modela", [mock.url + "/modela"]) + model_toml("modelb", [mock.url + "/modelb"]))
    key = gw.create_key("mallory", models="modela")
    for target in TRICKS[:6]:
        assert status_of(post_raw(gw, target, {"model": "modela", "messages": HELLO}, key)) == 400, target
    assert mock.requests() == []


def test_the_query_string_never_goes_upstream(seed) -> None:
    mock, gw, key = seed
    answer = post_raw(gw, "/v1/chat/completions?x=/../../modelb&api-version=1", {"model": "modela",
                                                                                "messages": HELLO}, key)
    assert status_of(answer) == 200, answer[:300]
    [received] = mock.requests()
    assert received["raw_path"] == "/modela/v1/chat/completions"


def test_only_allowlisted_headers_reach_the_upstream(start_mock, start_gateway) -> None:
    mock = start_mock("--api-key", "upstream-secret-0123456789")
    gw = start_gateway(model_toml("m", [mock.url], api_key_env="UPSTREAM_KEY"),
                       env={"UPSTREAM_KEY": "upstream-secret-0123456789"})
    key = gw.create_key("alice")
    identity = {
        "OpenAI-Organization": "org-victim", "OpenAI-Project": "proj-victim", "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-User": "alice", "X-Forwarded-Email": "alice@example.edu", "Forwarded": "for=10.0.0.1",
        "X-Real-IP": "10.0.0.1", "X-Remote-User": "alice", "Remote-User": "alice", "X-Auth-Request-User": "alice",
        "Cookie": "session=abc", "X-Api-Key": key, "Api-Key": key, "Proxy-Authorization": "Basic eDp5",
        "X-Request-Id": "client-chosen", "User-Agent": "alice-laptop",
        **{f"X-Custom-{i}": "x" for i in range(60)},
    }
    reply = gw.client(key, default_headers={**identity, "OpenAI-Beta": "assistants=v2"}).chat.completions\
        .with_raw_response.create(model="m", messages=HELLO)
    [received] = mock.requests()
    names = {name.lower() for name in received["headers"]}
    assert names <= {"host", "accept", "content-type", "content-length", "x-request-id", "openai-beta",
                     "authorization", "user-agent"}, names
    headers = {k.lower(): v for k, v in received["headers"].items()}
    assert headers["user-agent"] == "llmgateway"
    assert headers["authorization"] == "Bearer upstream-secret-0123456789"
    assert headers["openai-beta"] == "assistants=v2"
    assert uuid.UUID(headers["x-request-id"]).version == 4
    assert headers["x-request-id"] == reply.headers["x-request-id"]


def test_nothing_is_read_before_the_caller_is_known(start_mock, start_gateway) -> None:
    """A caller without credentials is refused from the headers: a body it promises is never
    waited for, on every door."""
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]), extra="[portal]\nenabled = true\ndev_login = true\n",
                       env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP})
    for target in ("/v1/chat/completions", "/v1/anything", "/admin/api/v1/keys", "/portal/api/keys"):
        started = time.monotonic()
        head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 5000000\r\n\r\n{\"model\"")
        answer = raw_exchange(gw.port, head.encode(), timeout=5)
        assert status_of(answer) in (401, 413), (target, answer[:200])
        assert time.monotonic() - started < 3, target
    assert mock.requests() == []


def test_a_small_refused_body_keeps_the_connection_usable(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "m", "messages": HELLO}),
                         headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            assert answer.status == 401 and answer.getheader("Connection") is None
            answer.read()
    finally:
        conn.close()


def test_a_trickled_body_is_cut(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]), server="body_timeout_seconds = 1")
    key = gw.create_key("alice")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as conn:
        conn.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ").encode())
        started = time.monotonic()
        conn.settimeout(10)
        while conn.recv(4096):
            pass
        assert time.monotonic() - started < 5
    assert mock.requests() == [] and gw.events() == []
    assert gw.client(key).chat.completions.create(model="m", messages=HELLO).choices


def test_header_floods_get_431_before_anything_else(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]))
    key = gw.create_key("alice")
    many = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(6500))
    huge = "X-Huge: " + "a" * 100_000 + "\r\n"
    for flood in (many, huge):
        for target in ("/v1/chat/completions", "/admin/api/v1/users", "/healthz"):
            answer = post_raw(gw, target, {"model": "m", "messages": HELLO}, key, flood)
            assert status_of(answer) == 431, answer[:200]
            assert error_of(answer)["code"] == "headers_too_large"
    assert mock.requests() == [] and gw.events() == []


NESTED = {
    "array": b"[" * 200_000 + b"]" * 200_000,
    "messages": b'{"model": "m", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "object": b'{"model": "m", "messages": [{"role": "user", "content": "hi", "x": ' + b'{"a":' * 3000 + b"1"
              + b"}" * 3000 + b"}]}",
}


@pytest.mark.parametrize("shape", sorted(NESTED))
def test_deeply_nested_json_is_a_400(start_mock, start_gateway, shape: str) -> None:
    body = NESTED[shape]
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]), extra="[portal]\nenabled = true\ndev_login = true\n",
                       env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP})
    key = gw.create_key("alice")
    for target, token in (("/v1/chat/completions", key), ("/admin/api/v1/keys", first_admin(gw).token)):
        head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        answer = raw_exchange(gw.port, head.encode() + body)
        assert status_of(answer) in (400, 413), answer[:300]
        if status_of(answer) == 400:
            assert "nested too deeply" in error_of(answer)["message"] or "JSON" in error_of(answer)["message"]
    assert mock.requests() == [] and gw.events() == []
    assert "Traceback" not in gw.log()


def test_malformed_requests_leave_no_secret_in_the_log(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]))
    key = gw.create_key("alice")
    for bad in (f"Authorization: Bearer {key}\x01\r\n", f"Cookie: llmgw_session={key}\x01\r\n",
                f"X-Api-Key: {key}\x7f\r\n"):
        raw_exchange(gw.port, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{bad}Content-Length: 2\r\n\r\n{{}}"
                     .encode())
    raw_exchange(gw.port, f"GET /v1/models?key={key} HTTP/9.9\r\nHost: x\r\n\r\n".encode())
    wait_for(lambda: gw.log().count("Malformed HTTP") >= 3, what="Tornado's malformed-request lines")
    assert key not in gw.log() and key[7:20] not in gw.log()


def test_the_upstreams_complaint_about_our_secret_stays_with_the_operator(start_mock, start_gateway) -> None:
    mock = start_mock("--api-key", "the-right-secret")
    secret = "sk-upstream-WRONG-0123456789abcdef"
    gw = start_gateway(model_toml("m", [mock.url], api_key_env="UPSTREAM_KEY"), env={"UPSTREAM_KEY": secret})
    key = gw.create_key("alice")
    for stream in (False, True):
        answer = post_raw(gw, "/v1/chat/completions", {"model": "m", "messages": HELLO, "stream": stream}, key)
        assert status_of(answer) == 502, answer[:300]
        error = error_of(answer)
        assert error["code"] == "upstream_auth_failed"
        assert secret[:6] not in answer.decode() and secret[-4:] not in answer.decode()
    wait_for(lambda: "refused the gateway's upstream credentials" in gw.log(), what="the operator's log line")
    assert secret[:6] not in gw.log() and secret[-4:] not in gw.log()
    events = gw.wait_events(2)
    assert {e["status"] for e in events} == {502}


def test_an_empty_refusal_names_the_status_and_the_model(start_mock, start_gateway) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("m", [mock.url]))
    key = gw.create_key("alice")
    for stream in (False, True):
        answer = post_raw(gw, "/v1/chat/completions", {"model": "m", "messages": HELLO, "stream": stream,
                                                       "mock": {"mode": "bare", "status": 400}}, key)
        assert status_of(answer) == 400, answer[:300]
        message = error_of(answer)["message"]
        assert "400" in message and "'m'" in message


class _TrailerUpstream(BaseHTTPRequestHandler):
    """An upstream that answers in chunks and sends a `Content-Type` trailer after the body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "Content-Type")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\nContent-Type: text/evil\r\n\r\n" % (len(body), body))

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def trailer_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TrailerUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_trailers_are_not_taken_for_headers(start_gateway, trailer_upstream: str) -> None:
    gw = start_gateway(model_toml("m", [trailer_upstream]))
    key = gw.create_key("alice")
    reply = gw.client(key).chat.completions.with_raw_response.create(model="m", messages=HELLO)
    assert reply.headers["content-type"] == "application/json"
    assert reply.parse().choices[0].message.content == "hi"
