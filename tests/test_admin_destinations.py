"""Upstream secrets go only where the operator sent them: an admin pointing a model at a listener
of their own gets a 400, or, where the operator allowed the host, a model that carries no secret;
link-local and cloud metadata addresses are refused whatever the configuration says."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from tests.admin_client import ADMIN_EXTRA, BOOTSTRAP, error_of, first_admin
from tests.conftest import GatewayProcess, MockUpstream, free_port, model_toml

SECRET = "upstream-secret-" + "s" * 32
HELLO = [{"role": "user", "content": "Hello"}]


class Listener:
    """An HTTP server of the test's own: records every request whole, answers like an upstream
    that reports no usage (so the gateway's own counting calls come here too)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                """Quiet."""

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                listener.seen.append(self.requestline.encode() + b"\n" + bytes(self.headers) + body)
                answer = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": "hi"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


def test_a_model_pointed_at_an_admins_listener_never_sends_it_a_secret(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream],
        listener: Listener) -> None:
    mock = start_mock()
    mock_host, listener_host = mock.url.removeprefix("http://"), listener.url.removeprefix("http://")
    gw = start_gateway(model_toml("config-model", [mock.url], api_key_env="UPSTREAM_SECRET"),
                       extra=ADMIN_EXTRA + f'[upstream]\ndefault_api_key_env = "UPSTREAM_SECRET"\n'
                       f'[admin]\nmodel_hosts = ["{mock_host}", "{listener_host}"]\n',
                       env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP, "UPSTREAM_SECRET": SECRET})
    admin = first_admin(gw)
    code, answer = admin.call("POST", "/models", {"id": "evil", "upstreams": [listener.url],
                                                  "api_key_env": "UPSTREAM_SECRET"})
    assert code == 400 and error_of(answer)["param"] == "api_key_env", answer
    assert mock_host in error_of(answer)["message"] and "admin.secret_hosts" in error_of(answer)["message"]
    code, answer = admin.call("POST", "/models", {"id": "far", "upstreams": [f"http://127.0.0.1:{free_port()}"]})
    assert code == 400 and error_of(answer)["param"] == "upstreams"
    assert "admin.model_hosts" in error_of(answer)["message"]
    created = admin.ok("POST", "/models", {"id": "plain", "upstreams": [listener.url]}, 201)
    assert created["api_key_env"] == "" and created["loaded"] is True
    code, answer = admin.call("PATCH", "/models/plain", {"api_key_env": "UPSTREAM_SECRET"})
    assert code == 400 and error_of(answer)["param"] == "api_key_env"
    key = gw.create_key("alice")
    assert gw.client(key).chat.completions.create(model="plain", messages=HELLO).choices[0].message.content == "hi"
    gw.client(key).chat.completions.create(model="config-model", messages=HELLO)
    events = gw.wait_events(2)
    assert {e["model"] for e in events} == {"plain", "config-model"}
    assert listener.seen, "the listener got the relayed call"
    assert not [r for r in listener.seen if SECRET.encode() in r or b"authorization" in r.lower()]
    assert any(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in mock.requests()), \
        "the configured model still sends its secret to its own upstream"


METADATA = ["http://169.254.169.254/latest", "http://2852039166", "http://0xa9fea9fe", "http://169.254.43518",
            "http://[::ffff:169.254.169.254]", "http://[fe80::1]:8080", "http://metadata.google.internal",
            "http://METADATA.google.internal.", "http://100.100.100.200", "http://[fd00:ec2::254]",
            "http://0.0.0.0:8000"]


def test_metadata_and_link_local_addresses_are_refused_even_when_every_host_is_allowed(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream]) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("config-model", [mock.url]),
                       extra=ADMIN_EXTRA + '[admin]\nmodel_hosts = ["*"]\n', env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP})
    admin = first_admin(gw)
    for url in METADATA:
        code, answer = admin.call("POST", "/models", {"id": "m", "upstreams": [url]})
        assert code == 400 and error_of(answer)["param"] == "upstreams", (url, answer)
        assert "metadata" in error_of(answer)["message"], (url, answer)
    admin.ok("POST", "/models", {"id": "m", "upstreams": [mock.url]}, 201)
    code, answer = admin.call("PATCH", "/models/m", {"upstreams": [mock.url, {"url": METADATA[0], "weight": 1}]})
    assert code == 400 and error_of(answer)["param"] == "upstreams"
    assert admin.ok("GET", "/models/m")["upstreams"] == [{"url": mock.url, "weight": 1.0}]
    key = gw.create_key("alice")
    assert gw.client(key).chat.completions.create(model="m", messages=HELLO).usage.total_tokens > 0


def test_credentials_in_upstream_urls_are_never_shown_or_logged(
        start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream]) -> None:
    mock = start_mock()
    gw = start_gateway(model_toml("config-model", [mock.url]),
                       extra=ADMIN_EXTRA + '[admin]\nmodel_hosts = ["127.0.0.1"]\n',
                       env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP})
    admin = first_admin(gw)
    with_password = mock.url.replace("http://", "http://proxyuser:pw-s3cret@")
    closed = f"http://proxyuser:pw-s3cret@127.0.0.1:{free_port()}"
    shown = admin.ok("POST", "/models", {"id": "m", "upstreams": [with_password]}, 201)
    assert shown["upstreams"] == [{"url": mock.url.replace("http://", "http://***@"), "weight": 1.0}]
    changed = admin.ok("PATCH", "/models/m", {"upstreams": shown["upstreams"], "prompt_cost_per_1k": 1})
    assert changed["upstreams"] == shown["upstreams"], "the redacted URL sent back keeps the stored one"
    key = gw.create_key("alice")
    assert gw.client(key).chat.completions.create(model="m", messages=HELLO).usage.total_tokens > 0
    assert mock.requests()[-1]["headers"].get("Authorization", "").startswith("Basic "), "the credentials still work"
    admin.ok("POST", "/models", {"id": "down", "upstreams": [closed]}, 201)
    with pytest.raises(openai.APIStatusError) as refused:
        gw.client(key).chat.completions.create(model="down", messages=HELLO)
    assert refused.value.status_code == 502
    assert "unreachable" in gw.log()
    seen = json.dumps([admin.ok("GET", "/models"), admin.ok("GET", "/audit")]) + gw.log()
    assert "pw-s3cret" not in seen and "proxyuser" not in seen
