"""Draining without resetting anyone: on SIGTERM the listener stays open and new requests get a 503.

Closing the listening socket at once resets every connection still waiting in the kernel's
accept queue (and any that arrive before the load balancer has noticed), and the client sees a
bare reset with no answer. Instead, from SIGTERM until the open calls have drained, every new
request (on a new or a kept-alive connection) is answered `503 shutting_down` with
`Connection: close` and `Retry-After: 1`, which clients and SDKs retry elsewhere; `/healthz`
still answers, so the liveness probe does not restart a draining process. The listener closes
only when the drain is over.
"""

from __future__ import annotations

import json
from typing import Any

from tornado import httputil

from .errors import error_body

REFUSAL = json.dumps(error_body("The gateway is shutting down; retry.", "server_error", "shutting_down")).encode()
STILL_SERVED = ("/healthz",)


class ShutdownGate(httputil.HTTPServerConnectionDelegate):
    """Wraps the application; once `closing` is set, new requests are refused (see the module)."""

    def __init__(self, app: httputil.HTTPServerConnectionDelegate) -> None:
        self.app = app
        self.closing = False

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        inner = self.app.start_request(server_conn, request_conn)
        return Refusal(request_conn, inner) if self.closing else inner

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class Refusal(httputil.HTTPMessageDelegate):
    """One request during the drain: a 503 and the connection closed, or passed on (`STILL_SERVED`)."""

    def __init__(self, conn: httputil.HTTPConnection, inner: httputil.HTTPMessageDelegate) -> None:
        self.conn = conn
        self.inner = inner
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
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(REFUSAL)),
                                        "Connection": "close", "Retry-After": "1"})
        written = self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", 503, "Service Unavailable"),
                                          headers, REFUSAL)
        self.conn.finish()
        stream = getattr(self.conn, "stream", None)
        if stream is not None:
            written.add_done_callback(lambda _: stream.close())

    def on_connection_close(self) -> None:
        if self.passed:
            self.inner.on_connection_close()
