"""Errors the gateway answers with, in the OpenAI error shape.

Every refusal on `/v1` goes through `GatewayError` so that clients (the OpenAI SDKs among them)
see the status code and body they already know how to handle.
"""

from __future__ import annotations

import json

CONTENT_TYPE = "application/json"
"""The type of every error body, whoever writes it (the handlers, or the guard below them)."""


class GatewayError(Exception):
    """A refusal with an HTTP status and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return error_body(self.message, self.type, self.code, self.param)

    def encoded(self) -> bytes:
        """The body as sent: the one rendering of an error, for every door that answers JSON."""
        return json.dumps(self.body()).encode()


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """Build the OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_error_event(message: str, type_: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE event carrying an OpenAI error, to end a stream that failed after its first byte."""
    return b"data: " + json.dumps(error_body(message, type_, code)).encode() + b"\n\n"


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", "invalid_request", param)


def unauthorized(message: str, code: str = "invalid_api_key") -> GatewayError:
    return GatewayError(401, message, "authentication_error", code)


def upstream_failure(status: int, message: str, code: str) -> GatewayError:
    return GatewayError(status, message, "upstream_error", code)


def not_found(what: str, code: str) -> GatewayError:
    return GatewayError(404, f"No such {what}.", "invalid_request_error", code)


def conflict(message: str, code: str, param: str | None = None) -> GatewayError:
    return GatewayError(409, message, "invalid_request_error", code, param)
