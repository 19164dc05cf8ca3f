"""What every request meets before any handler: header limits and each door's body cap.

Tornado parses the header block, then hands it to the application's delegate; `GuardedApplication`
looks at it there, before routing. Too many header fields, or too many bytes of them, get a 431
at once (Tornado's own limit, `MAX_HEADER_BLOCK`, is set well above ours so that a long header
line is answered, not dropped). A declared body longer than the door takes gets a 413 before a
byte of it is read, and the connection is capped a little above the door's cap, so that handlers
reading the body (see `BodyReader`) can answer a chunked body past the cap with their own 413.

A body must arrive within `server.body_timeout_seconds`. Tornado's own body timeout costs a
few percent of a /v1 call's CPU (a timeout future around every body read), so /v1 keeps its
own clock, one timer per call (`BodyReader.watch_body`); the other doors use Tornado's.

Draining without resetting anyone (`ShutdownGate`): on SIGTERM the listener stays open and new
requests get a 503. Closing the listening socket at once resets every connection still waiting
in the kernel's accept queue (and any that arrive before the load balancer has noticed), and the
client sees a bare reset with no answer. Instead, from SIGTERM until the open calls have drained,
every new request (on a new or a kept-alive connection) is answered `503 shutting_down` with
`Connection: close` and `Retry-After: 1`, which clients and SDKs retry elsewhere; `/healthz`
still answers, so the liveness probe does not restart a draining process. The listener closes
only when the drain is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tornado import httputil
from tornado.web import Application

from llmgateway.errors import CONTENT_TYPE, GatewayError

log = logging.getLogger("llmgateway.access")

MAX_HEADER_BLOCK = 256 * 1024
SMALL_BODY = 64 * 1024
SAML_BODY = 512 * 1024
SHUTTING_DOWN = GatewayError(503, "The gateway is shutting down; retry.", "server_error", "shutting_down",
                             headers={"Retry-After": "1"})
STILL_SERVED = ("/healthz",)


def answer_and_close(conn: httputil.HTTPConnection, err: GatewayError) -> None:
    """Answer `err` below the application (no handler runs), in the body the handlers write too, and
    close the connection after it."""
    body = err.encoded()
    headers = httputil.HTTPHeaders({"Content-Type": CONTENT_TYPE, "Content-Length": str(len(body)),
                                    "Connection": "close", **err.headers})
    reason = httputil.responses.get(err.status, "Error")
    written = conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", err.status, reason), headers, body)
    conn.finish()
    stream = getattr(conn, "stream", None)
    if stream is not None and written is not None:
        written.add_done_callback(lambda _: stream.close())


def door_cap(path: str, api_cap: int) -> int:
    """How large a body the door behind `path` takes: /v1 its setting; SAML responses 512 KiB
    (signed XML with certificates); the portal's and admin's JSON and forms 64 KiB."""
    if path.startswith("/v1/"):
        return api_cap
    if path.startswith("/saml/"):
        return SAML_BODY
    return SMALL_BODY


class GuardedApplication(Application):
    """A Tornado application whose requests pass `RequestGuard` first."""

    def __init__(self, *args: Any, api_body_cap: int, max_headers: int, max_header_bytes: int,
                 body_timeout: float, refused: Callable[[str], None] = lambda kind: None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = refused
        self.api_body_cap = api_body_cap
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.body_timeout = body_timeout

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return RequestGuard(self, super().start_request(server_conn, request_conn), request_conn)


class RequestGuard(httputil.HTTPMessageDelegate):
    """Answers 431 or 413 from the headers alone, or passes the request on untouched."""

    def __init__(self, app: GuardedApplication, inner: httputil.HTTPMessageDelegate,
                 conn: httputil.HTTPConnection) -> None:
        self.app = app
        self.inner = inner
        self.conn = conn
        self.refused = False

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Any:
        assert isinstance(start_line, httputil.RequestStartLine)
        path = start_line.path.partition("?")[0]
        fields = list(headers.get_all())
        size = sum(len(name) + len(value) + 4 for name, value in fields)
        if len(fields) > self.app.max_headers or size > self.app.max_header_bytes:
            return self.refuse(431, start_line, path, GatewayError(
                431, f"The request has too many header fields or header bytes (at most {self.app.max_headers} "
                f"fields and {self.app.max_header_bytes} bytes).", "invalid_request_error", "headers_too_large"))
        cap = door_cap(path, self.app.api_body_cap)
        declared = headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            return self.refuse(413, start_line, path, GatewayError(
                413, f"The request body is larger than {cap} bytes.", "invalid_request_error", "request_too_large"))
        self.conn.set_max_body_size(cap * 2)  # type: ignore[attr-defined]
        if not path.startswith("/v1/"):
            self.conn.set_body_timeout(self.app.body_timeout)  # type: ignore[attr-defined]
        return self.inner.headers_received(start_line, headers)

    def refuse(self, status: int, start_line: httputil.RequestStartLine, path: str, err: GatewayError) -> None:
        """Answer and close without reading the body or routing the request."""
        self.refused = True
        if path.startswith("/v1/"):
            self.app.refused("body")
        answer_and_close(self.conn, err)
        log.warning("%d %s %s (refused before routing)", status, start_line.method, path[:200])

    def data_received(self, chunk: bytes) -> Any:
        if not self.refused:
            return self.inner.data_received(chunk)
        return None

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()


class ShutdownGate(httputil.HTTPServerConnectionDelegate):
    """Wraps the application; once `closing` is set, new requests are refused (see the module)
    and each refusal is told to `refused` (the metrics count them)."""

    def __init__(self, app: httputil.HTTPServerConnectionDelegate,
                 refused: Callable[[str], None] = lambda kind: None) -> None:
        self.app = app
        self.refused = refused
        self.closing = False

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        inner = self.app.start_request(server_conn, request_conn)
        return Refusal(request_conn, inner, self.refused) if self.closing else inner

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class Refusal(httputil.HTTPMessageDelegate):
    """One request during the drain: a 503 and the connection closed, or passed on (`STILL_SERVED`)."""

    def __init__(self, conn: httputil.HTTPConnection, inner: httputil.HTTPMessageDelegate,
                 refused: Callable[[str], None]) -> None:
        self.conn = conn
        self.inner = inner
        self.refused = refused
        self.passed = False

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self.passed = start_line.path in STILL_SERVED
        return self.inner.headers_received(start_line, headers) if self.passed else None

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk) if self.passed else None

    def finish(self) -> None:
        if self.passed:
            self.inner.finish()
            return
        self.refused("shutdown")
        answer_and_close(self.conn, SHUTTING_DOWN)

    def on_connection_close(self) -> None:
        if self.passed:
            self.inner.on_connection_close()
