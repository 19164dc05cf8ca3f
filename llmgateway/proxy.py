"""The request path after authentication: validate, authorize, route, relay, settle.

The body is parsed once; the gateway re-serialises it only when it must change it (the upstream
model name, or asking a stream for its usage chunk). Streams are relayed chunk by chunk through a
`Sink` (the handler) while `StreamMeter` reads usage from them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tornado.httpclient import HTTPResponse

from .errors import GatewayError, bad_request, sse_error_event, upstream_failure
from .gateway import Gateway
from .limits import Ticket
from .metering import StreamMeter, choice_text, find_usage
from .records import KeyRecord, UsageEvent
from .routing import Route, UpstreamState, mark_down
from .tokencount import estimate_usage
from .upstream import CONNECT_ERRORS, TIMEOUT_ERRORS, curl_errno, never_connected

log = logging.getLogger("llmgateway.proxy")

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
USAGE_STREAMS = (CHAT, COMPLETIONS)
REQUIRED = {CHAT: ("messages", list), COMPLETIONS: ("prompt", (str, list)), EMBEDDINGS: ("input", (str, list))}
INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")
CLIENT_CLOSED = 499
SHUTTING_DOWN = 503
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """Unique across processes (random per-process prefix) and cheap (a counter)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


DROP_REQUEST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Authorization", "Cookie", "Proxy-Authorization", "Host", "Content-Length", "Connection",
        "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection",
        "Accept-Encoding", "Expect", "X-Api-Key", "Api-Key",
    )
)
RELAYED_RESPONSE_HEADERS = frozenset(("content-type", "cache-control"))


class Sink(Protocol):
    """Where a relayed response goes (the handler)."""

    def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...

    def send(self, data: bytes) -> None:
        """Write and flush; a no-op once the client is gone."""

    def end(self) -> None: ...


@dataclass(eq=False)
class Call:
    """One proxied request from admission to settlement."""

    key: KeyRecord
    route: Route
    endpoint: str
    body: dict
    payload: bytes
    stream: bool
    strip_usage: bool
    headers: dict[str, str]
    request_id: str = field(default_factory=new_request_id)
    ts: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    cut: int = 0
    upstream: UpstreamState | None = None
    ticket: Ticket | None = None

    def cancel(self, status: int = 0) -> None:
        """Stop the upstream transfer at its next progress check; `status` says why (499 or 503)."""
        self.cut = status or CLIENT_CLOSED


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("We could not parse the JSON body of your request: it is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def validate(endpoint: str, body: dict) -> tuple[str, bool]:
    """(model, stream) after checking the fields the gateway relies on."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter (a non-empty string).", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object.", "stream_options")
        if not isinstance(options.get("include_usage", False), bool):
            raise bad_request("'stream_options.include_usage' must be a boolean.", "stream_options.include_usage")
    for name in INT_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise bad_request(f"'{name}' must be a non-negative integer.", name)
    required = REQUIRED.get(endpoint)
    if required is not None:
        name, kind = required
        if not isinstance(body.get(name), kind) or not body[name]:
            raise bad_request(f"'{name}' is required and must not be empty.", name)
    return model, stream


def authorize_model(gw: Gateway, key: KeyRecord, model: str) -> Route:
    """The route of a model this key may use; 404 for an unknown model, 403 for one not allowed."""
    route = gw.router.get(model)
    if route is None:
        raise GatewayError(404, f"The model '{model}' does not exist.", "invalid_request_error",
                           "model_not_found", "model")
    if not key.allows(model):
        raise GatewayError(403, f"This API key may not use the model '{model}'.", "permission_error",
                           "model_not_allowed", "model")
    return route


def prepare(gw: Gateway, key: KeyRecord, endpoint: str, raw: bytes, client_headers: Any) -> Call:
    """Parse, validate, authorize and route one request."""
    body = parse_body(raw)
    model, stream = validate(endpoint, body)
    route = authorize_model(gw, key, model)
    changed = False
    if route.model.target_model != model:
        body["model"] = route.model.target_model
        changed = True
    strip_usage = False
    if stream and endpoint in USAGE_STREAMS:
        options = body.get("stream_options") or {}
        if options.get("include_usage") is not True:
            body["stream_options"] = {**options, "include_usage": True}
            strip_usage = changed = True
    payload = json.dumps(body).encode() if changed else raw
    headers = {k: v for k, v in client_headers.get_all() if k.lower() not in DROP_REQUEST_HEADERS}
    headers["Content-Type"] = "application/json"
    if route.secret:
        headers["Authorization"] = f"Bearer {route.secret}"
    call = Call(key, route, endpoint, body, payload, stream, strip_usage, headers)
    headers["X-Request-Id"] = call.request_id
    return call


async def admit(gw: Gateway, call: Call, owner_limits: dict[str, float]) -> None:
    """Reserve against the call's limits (a 429 if any is reached); nothing to do when none apply."""
    model = call.route.model
    checks = gw.admission.checks(call.key, owner_limits, model, call.endpoint, call.body)
    if checks:
        call.ticket = await gw.admission.admit(call.request_id, checks, model.free)


def _error_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(obj.get("detail"), str):
            return obj["detail"]
    return ""


def upstream_status_error(status: int, body: bytes, retry_after: str | None = None) -> GatewayError:
    """Map an upstream error status: client errors pass through, server errors become 502/503/504.

    The upstream's 401/403 would blame the client's key for the gateway's upstream secret, so
    they count as upstream failures. A Retry-After from the upstream is passed on.
    """
    message = _error_message(body)
    if 400 <= status < 500 and status not in (401, 403, 407):
        err = GatewayError(status, message or f"The upstream refused the request ({status}).",
                           "invalid_request_error" if status != 429 else "rate_limit_error", "upstream_" + str(status))
    elif status in (503, 504):
        text = f"The upstream is unavailable ({status}). {message}".strip()
        err = upstream_failure(status, text, f"upstream_{status}")
    else:
        err = upstream_failure(502, f"The upstream failed ({status}). {message}".strip(), "upstream_error")
    if retry_after and retry_after.strip().isdigit():
        err.headers["Retry-After"] = retry_after.strip()
    return err


def transport_error(response: HTTPResponse) -> GatewayError:
    errno = curl_errno(response)
    if errno in TIMEOUT_ERRORS:
        return upstream_failure(504, "The upstream did not answer in time.", "upstream_timeout")
    if errno in CONNECT_ERRORS:
        return upstream_failure(502, "No upstream of this model could be reached.", "upstream_unreachable")
    return upstream_failure(502, "The connection to the upstream failed.", "upstream_connection_error")


class Relay:
    """Carries one call to an upstream and back, and settles its usage."""

    def __init__(self, gw: Gateway, call: Call, sink: Sink) -> None:
        self.gw = gw
        self.call = call
        self.sink = sink
        self.status = 0
        self.headers_in: dict[str, str] = {}
        self.started_client = False
        self.error_body: list[bytes] = []
        self.meter = StreamMeter(call.strip_usage) if call.stream else None
        self.settling = False

    async def run(self) -> None:
        """Relay, failing over to the next upstream on a connect error before the first byte."""
        self.gw.begin(self.call, self)
        try:
            response = None
            for upstream in self.call.route.candidates():
                self.call.upstream = upstream
                upstream.outstanding += 1
                try:
                    response = await self._fetch(upstream)
                finally:
                    upstream.outstanding -= 1
                if not (response.code == 599 and never_connected(response)) or self.started_client:
                    break
                mark_down(upstream)
                log.warning("upstream %s unreachable for model %s; trying the next", upstream.url,
                            self.call.route.model.id)
            assert response is not None
            if self.call.stream:
                self._finish_stream(response)
            else:
                self._finish_plain(response)
        finally:
            if not self.settling:
                self.gw.settle(self.call.ticket, None)
            self.gw.end(self.call)

    async def _fetch(self, upstream: UpstreamState) -> HTTPResponse:
        url = upstream.url + self.call.endpoint
        self.status = 0
        self.headers_in = {}
        chunks = self._on_chunk if self.call.stream else None
        return await self.gw.upstream.fetch(
            url, self.call.payload, self.call.headers, self._cancelled, streaming_callback=chunks,
            header_line=self._on_header,
        )

    def _cancelled(self) -> bool:
        return bool(self.call.cut)

    def _on_header(self, raw: bytes) -> None:
        """libcurl HEADERFUNCTION: runs inside libcurl, so it only records."""
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
            self.headers_in = {}
        elif ":" in line and not line[0].isspace():
            name, _, value = line.partition(":")
            self.headers_in[name.strip().lower()] = value.strip()

    def _relayed_headers(self) -> list[tuple[str, str]]:
        """Only content headers go back: the upstream's others (rate limits of the gateway's
        upstream key, cookies, auth challenges, server identity) are not the client's business."""
        headers = [(k, v) for k, v in self.headers_in.items() if k in RELAYED_RESPONSE_HEADERS]
        headers.append(("X-Request-Id", self.call.request_id))
        if self.call.ticket is not None:
            headers += self.call.ticket.headers
        return headers

    def _on_chunk(self, data: bytes) -> None:
        if not 200 <= self.status < 300:
            if sum(map(len, self.error_body)) < 65536:
                self.error_body.append(data)
            return
        if not self.started_client:
            self.started_client = True
            self.sink.start(self.status, self._relayed_headers())
        assert self.meter is not None
        out = self.meter.feed(data)
        if out:
            self.sink.send(out)

    def _failure(self, response: HTTPResponse) -> GatewayError | None:
        """Why the transfer ended early, or None if the upstream completed it (a stream that sent
        `data: [DONE]` is complete for the client, however its transfer ended)."""
        if response.code != 599 or self.meter is not None and self.meter.done:
            return None
        if self.call.cut == SHUTTING_DOWN:
            return GatewayError(503, "The gateway is shutting down; retry.", "server_error", "shutting_down")
        if self.call.cut == CLIENT_CLOSED:
            return GatewayError(CLIENT_CLOSED, "The client closed the connection.", "client_closed", "client_closed")
        return transport_error(response)

    def _finish_stream(self, response: HTTPResponse) -> None:
        meter = self.meter
        assert meter is not None
        err = self._failure(response)
        if not self.started_client:
            retry_after = self.headers_in.get("retry-after")
            err = err or upstream_status_error(response.code, b"".join(self.error_body), retry_after)
            self._settle(err.status, "")
            raise err
        tail = meter.finish()
        if tail:
            self.sink.send(tail)
        if err is not None and err.status != CLIENT_CLOSED:
            self.sink.send(sse_error_event(f"The stream broke off: {err.message}", err.type, err.code))
        self.sink.end()
        self._settle(err.status if err else self.status, "", meter.usage, meter)

    def _finish_plain(self, response: HTTPResponse) -> None:
        err = self._failure(response)
        body = response.body or b""
        if err is None and not 200 <= response.code < 300:
            err = upstream_status_error(response.code, body, self.headers_in.get("retry-after"))
        obj: Any = None
        if err is None and ("json" in self.headers_in.get("content-type", "") or self.call.endpoint in REQUIRED):
            try:
                obj = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                err = upstream_failure(502, "The upstream answered with invalid JSON.", "upstream_invalid_response")
        if err is not None:
            self._settle(err.status, "")
            raise err
        self.sink.start(response.code, self._relayed_headers())
        self.sink.send(body)
        self.sink.end()
        self._settle(response.code, choice_text(obj), find_usage(obj))

    def _settle(
        self, status: int, text: str, usage: tuple[int, int] | None = None, meter: StreamMeter | None = None
    ) -> None:
        """Record the call's usage: exact from upstream, else counted after the response."""
        self.settling = True
        latency_ms = (time.perf_counter() - self.call.started) * 1000
        if usage is not None or status >= 400 and meter is None:
            prompt, completion = usage or (0, 0)
            self._record(self._event(status, latency_ms, prompt, completion, False))
            return
        self.gw.in_background(self._count_and_record(status, latency_ms, text, meter))

    async def _count_and_record(self, status: int, latency_ms: float, text: str, meter: StreamMeter | None) -> None:
        if meter is not None:
            text = meter.completion_text()
        call = self.call
        upstream_url = call.upstream.url if call.upstream else call.route.pool[0].url
        try:
            prompt, completion, estimated = await self.gw.counter.count(
                upstream_url, call.route.secret, call.route.model.target_model, call.endpoint, call.body, text,
                call.route.model.usage_probe,
            )
        except asyncio.CancelledError:
            self._record(self._event(status, latency_ms, *estimate_usage(call.endpoint, call.body, text)))
            raise
        except Exception:
            log.exception("token counting failed for %s; recording an estimate", call.request_id)
            prompt, completion, estimated = estimate_usage(call.endpoint, call.body, text)
        self._record(self._event(status, latency_ms, prompt, completion, estimated))

    def _record(self, event: UsageEvent) -> None:
        """Into the ledger, and the call's reservation settled to what it really used."""
        self.gw.record(event)
        self.gw.settle(self.call.ticket, event)

    def _event(self, status: int, latency_ms: float, prompt: int, completion: int, estimated: bool) -> UsageEvent:
        model = self.call.route.model
        cost = prompt / 1000 * model.prompt_cost_per_1k + completion / 1000 * model.completion_cost_per_1k
        return UsageEvent(
            ts=self.call.ts, request_id=self.call.request_id, key_id=self.call.key.id, user=self.call.key.owner,
            model=model.id, prompt_tokens=prompt, completion_tokens=completion, cost=round(cost, 10),
            status=status, latency_ms=round(latency_ms, 3), streamed=self.call.stream, estimated=estimated,
            endpoint=self.call.endpoint,
        )
