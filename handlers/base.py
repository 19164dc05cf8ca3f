"""What every handler shares: the gateway object and OpenAI-style error rendering."""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado.web import HTTPError, RequestHandler

from llmgateway.errors import GatewayError, error_body
from llmgateway.gateway import Gateway

log = logging.getLogger("llmgateway.handlers")

REASONS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


class BaseHandler(RequestHandler):
    """JSON in, JSON out; every error in the OpenAI error shape."""

    gateway: Gateway
    gone = False

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def send_gateway_error(self, err: GatewayError) -> None:
        """Answer with `err` unless a response has already started or the client is gone."""
        if self._headers_written or self.gone:
            return
        self.clear()
        self.clear_header("Server")
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.write_json(err.body(), err.status)

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """Tornado's own version logs the full URI and request repr; the query string can carry
        a key, so only method and path are logged here."""
        if isinstance(value, HTTPError):
            if value.log_message:
                detail = value.log_message % value.args if value.args else value.log_message
                log.warning("%d %s %s: %s", value.status_code, self.request.method, self.request.path, detail)
            return
        log.error("uncaught exception in %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors Tornado raises itself (405, unexpected exceptions) in the OpenAI shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "The gateway failed to handle the request."
        else:
            message = self._reason
        kind = REASONS.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(message, kind)))


class NotFoundHandler(BaseHandler):
    """Any path the gateway does not serve."""

    def prepare(self) -> None:
        self.send_gateway_error(GatewayError(404, f"Unknown path {self.request.path!r}.", "invalid_request_error",
                                             "unknown_path"))
