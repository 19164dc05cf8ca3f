"""The request path after authentication: validate, authorize, route, relay, settle.

The body is read once, its prompt left as raw JSON (`requestbody`); the gateway changes its
bytes only when it must (asking a stream for its usage chunk, or the upstream model name): a
splice for the one, the body parsed and written again with orjson for the other
(`upstream_payload`). Streams are relayed chunk by chunk through a
`Sink` (the handler) while `StreamMeter` reads usage from them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tornado.httpclient import HTTPResponse

from ..catalog.endpoints import KNOWN, Endpoint
from ..catalog.routing import Route, UpstreamState
from ..errors import GatewayError, bad_request, sse_error_event, upstream_failure
from ..gateway import Gateway
from ..jsonbody import encode_body, load_json, prepend_member, strip_bom
from ..limits.rules import Ticket
from ..records import KeyRecord, UsageEvent
from ..redact import redact_url
from ..usage.metering import StreamMeter, choice_text, find_usage
from ..usage.tokencount import Prompt, Target, estimate_prompt, estimate_usage
from .requestbody import RequestBody, read_body
from .upstream import CONNECT_ERRORS, TIMEOUT_ERRORS, curl_errno, never_connected

log = logging.getLogger("llmgateway.proxy")

INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")
COUNT_WAIT_SECONDS = 60.0
CLIENT_CLOSED = 499
BUSY = (429, 503)
SHUTTING_DOWN = 503
# The upper half of every request id of this process: random, with the UUID version-4 bits set.
_ID_PREFIX = str(uuid.UUID(int=int.from_bytes(os.urandom(8)) << 64, version=4))[:19]
_ID_COUNTER = itertools.count(1)
_VARIANT = 0x8 << 60


def new_request_id() -> str:
    """A version-4 UUID: unique across processes (random per-process upper half) and cheap (a
    counter below it, with the variant bits). Servers validate the X-Request-Id they are sent;
    llama-cpp-python's refuses anything but a UUID with an empty 400."""
    low = _VARIANT | next(_ID_COUNTER)
    return f"{_ID_PREFIX}{low >> 48:04x}-{low & 0xFFFFFFFFFFFF:012x}"


# What an OpenAI-compatible server needs from the client's headers to serve a call. Nothing else
# goes upstream: not the client's credentials, cookies or identity (X-Forwarded-*, user headers
# of an auth proxy), nor OpenAI-Organization/-Project, which pick the account a hosted upstream bills.
FORWARDED_REQUEST_HEADERS = ("Accept", "OpenAI-Beta")
USER_AGENT = "llmgateway"
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
    endpoint: Endpoint
    body: RequestBody | None
    payload: bytes
    stream: bool
    strip_usage: bool
    headers: dict[str, str]
    request_id: str = field(default_factory=new_request_id)
    ts: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    cut: int = 0
    prompt_estimate: int = 0
    upstream: UpstreamState | None = None
    ticket: Ticket | None = None

    def forget_body(self) -> None:
        """Let go of the read body (it holds the client's bytes) once admission has read it: a
        stream can outlive it by minutes, and the payload, which the transfer holds anyway, is
        parsed if the usage must be counted (`parsed`). One copy of a large prompt per open
        call, not two."""
        self.body = None

    def parsed(self) -> dict:
        """The body as the upstream got it, parsed from the payload."""
        return load_json(self.payload)

    def cancel(self, status: int = 0) -> None:
        """Stop the upstream transfer at its next progress check; `status` says why (499 or 503)."""
        self.cut = status or CLIENT_CLOSED


def validate(endpoint: Endpoint, body: RequestBody) -> tuple[str, bool]:
    """(model, stream) after checking the fields the gateway relies on."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter (a non-empty string).", "model")
    stream = body.get("stream")
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
    endpoint.require_prompt(body)
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


def prepare(gw: Gateway, key: KeyRecord, endpoint: Endpoint, raw: bytes, client_headers: Any) -> Call:
    """Parse, validate, authorize and route one request to a registry endpoint."""
    raw = strip_bom(raw)
    body = read_body(raw)
    model, stream = validate(endpoint, body)
    route = authorize_model(gw, key, model)
    options = body.get("stream_options") or {}
    strip_usage = stream and endpoint.usage_in_stream and options.get("include_usage") is not True
    payload = upstream_payload(raw, body, route.model.target_model, strip_usage)
    call = Call(key, route, endpoint, body, payload, stream, strip_usage, {})
    call.prompt_estimate = estimate_prompt(endpoint, body)
    call.headers = upstream_headers(client_headers, route.secret, call.request_id)
    return call


def upstream_payload(raw: bytes, body: RequestBody, target_model: str, ask_usage: bool) -> bytes:
    """The body the upstream gets: the client's bytes, with `stream_options.include_usage` set
    when asked and the model renamed to the upstream's. Setting the option on a body without
    `stream_options` is a splice in front; anything else parses the body and writes it again
    (orjson): finding a top-level member in the bytes safely costs more than that."""
    rename = body.get("model") != target_model
    if not rename and not ask_usage:
        return raw
    if not rename and not body.has("stream_options"):
        return prepend_member(raw, "stream_options", {"include_usage": True})
    obj = load_json(raw)
    obj["model"] = target_model
    if ask_usage:
        obj["stream_options"] = {**(obj.get("stream_options") or {}), "include_usage": True}
    return encode_body(obj)


def upstream_headers(client_headers: Any, secret: str, request_id: str) -> dict[str, str]:
    """The headers an upstream gets: the allowlisted ones of the client's, and the gateway's own."""
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id, "User-Agent": USER_AGENT}
    for name in FORWARDED_REQUEST_HEADERS:
        value = client_headers.get(name)
        if value is not None:
            headers[name] = value
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


async def admit(gw: Gateway, call: Call, owner_limits: dict[str, float]) -> None:
    """Reserve against the call's limits (a 429 if any is reached); nothing to do when none apply."""
    model = call.route.model
    assert call.body is not None, "admitted before the relay lets go of the body"
    checks = gw.admission.checks(call.key, owner_limits, model, call.endpoint, call.body)
    if checks:
        call.ticket = await gw.admission.admit(call.request_id, checks, model.free)


def _error_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(obj.get("detail"), str):
            return obj["detail"]
    return ""


def upstream_status_error(status: int, body: bytes, model: str, retry_after: str | None = None) -> GatewayError:
    """Map an upstream error status: client errors pass through, server errors become 502/503/504.

    A 401, 403 or 407 is the upstream's complaint about the gateway's own upstream secret: it
    would blame the client's key, and its words can quote the secret, so the client gets a 502
    of ours and the operator a log line without the upstream's words. A Retry-After from the
    upstream is passed on.
    """
    if status in (401, 403, 407):
        log.error("the upstream of model %s refused the gateway's upstream credentials (%d); check the "
                  "model's secret", model, status)
        return upstream_failure(502, f"The upstream of model '{model}' refused the gateway's credentials; "
                                "the gateway's operators have been told.", "upstream_auth_failed")
    message = _error_message(body)
    if 400 <= status < 500:
        err = GatewayError(status, message or f"The upstream of model '{model}' refused the request ({status}) "
                           "without saying why.",
                           "invalid_request_error" if status != 429 else "rate_limit_error", "upstream_" + str(status))
    elif status in (503, 504):
        text = f"The upstream is unavailable ({status}). {message}".strip()
        err = upstream_failure(status, text, f"upstream_{status}")
    else:
        err = upstream_failure(502, f"The upstream failed ({status}). {message}".strip(), "upstream_error")
    if retry_after and retry_after.strip().isdigit():
        err.headers["Retry-After"] = retry_after.strip()
    return err


def model_renamer(upstream_name: str, client_name: str) -> Callable[[bytes], bytes] | None:
    """What renames the upstream's model name to the one the client sent, in relayed JSON and
    SSE bytes (None when they are the same): clients and cost trackers match on the name they
    sent. A byte replace of the `"model": "<name>"` member, not a parse and re-encode: inside a
    JSON string the quotes would be escaped, so generated text never matches."""
    if upstream_name == client_name:
        return None
    old, new = json.dumps(upstream_name).encode(), json.dumps(client_name).encode()
    pairs = [(b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new)]

    def rename(data: bytes) -> bytes:
        if old not in data:
            return data
        for before, after in pairs:
            data = data.replace(before, after)
        return data

    return rename


def no_healthy_upstream(route: Route) -> GatewayError:
    """A model whose upstreams are all ejected (or their one trial call in flight): 503 at once,
    with the seconds until one may be tried again."""
    seconds = route.retry_after()
    err = upstream_failure(503, f"No upstream of model '{route.model.id}' is healthy right now; retry in "
                           f"{seconds} s.", "no_healthy_upstream")
    err.headers["Retry-After"] = str(seconds)
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
        self.in_headers = False
        self.started_client = False
        self.error_body: list[bytes] = []
        self.rename = model_renamer(call.route.model.target_model, call.route.model.id)
        self.meter = StreamMeter(call.strip_usage, self.rename is not None) if call.stream else None
        self.settling = False
        self.first_chunk = 0.0
        self.chunks = 0

    async def run(self) -> None:
        """Relay through the model's pool (`_through_pool`), then finish the answer and settle."""
        self.gw.begin(self.call, self)
        self.call.forget_body()
        try:
            response = await self._through_pool()
            if self.call.stream:
                self._finish_stream(response)
            else:
                self._finish_plain(response)
        finally:
            if not self.settling:
                self.gw.settle(self.call.ticket, None)
            self.gw.end(self.call)

    async def _through_pool(self) -> HTTPResponse:
        """Call one upstream after another until one answers for good: the next is tried only
        while nothing has reached the client, after a connection that was never made, or (with
        `failover_on_busy`) a 429 or 503. The client gets the last answer when all refuse, and a
        503 at once when no upstream may be called (all ejected, or their trial in flight)."""
        route = self.call.route
        tried: list[UpstreamState] = []
        upstream = route.pick(tried)
        if upstream is None:
            err = no_healthy_upstream(route)
            self._settle(err.status, "")
            raise err
        while True:
            tried.append(upstream)
            self.call.upstream = upstream
            response = await self._attempt(upstream)
            if self.started_client or not self._may_move_on(response):
                return response
            following = route.pick(tried)
            if following is not None or response.code == 599:
                log.warning("upstream %s of model %s %s%s", redact_url(upstream.url), route.model.id,
                            "is unreachable" if response.code == 599 else f"answered {response.code}",
                            "; trying the next" if following is not None else "")
            if following is None:
                return response
            upstream.failovers += 1
            upstream = following

    async def _attempt(self, upstream: UpstreamState) -> HTTPResponse:
        """One upstream's try at the call; its outcome feeds the upstream's health."""
        upstream.enter()
        response = None
        try:
            response = await self._fetch(upstream)
        finally:
            upstream.leave()
            outcome = None if response is None else self._outcome(response)
            if outcome is None:
                upstream.call_undecided()
            elif outcome:
                upstream.call_succeeded()
            else:
                upstream.call_failed(self.call.route.model, time.monotonic())
        return response

    def _outcome(self, response: HTTPResponse) -> bool | None:
        """True: the upstream answered (any status below 500, a stream it completed). False: it
        failed (no connection, a timeout, a transfer cut by its side, a 5xx). None: the gateway
        cut the transfer (client gone, shutdown), which says nothing about the upstream."""
        if response.code == 599:
            if self.meter is not None and self.meter.done:
                return True
            return None if self.call.cut else False
        return response.code < 500

    def _may_move_on(self, response: HTTPResponse) -> bool:
        if response.code == 599:
            return never_connected(response) and not self.call.cut
        return response.code in BUSY and self.call.route.model.failover_on_busy

    async def _fetch(self, upstream: UpstreamState) -> HTTPResponse:
        url = upstream.url + self.call.endpoint.path
        self.status = 0
        self.headers_in = {}
        self.error_body = []
        chunks = self._on_chunk if self.call.stream else None
        return await self.gw.upstream.fetch(
            url, self.call.payload, self.call.headers, self._cancelled, streaming_callback=chunks,
            header_line=self._on_header,
        )

    def _cancelled(self) -> bool:
        return bool(self.call.cut)

    def _on_header(self, raw: bytes) -> None:
        """libcurl HEADERFUNCTION: runs inside libcurl, so it only records.

        libcurl passes a chunked body's trailer lines here too, after the body; only lines of
        the header block (from a status line to the blank line) count as headers."""
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
            self.headers_in = {}
            self.in_headers = True
        elif not line:
            self.in_headers = False
        elif self.in_headers and ":" in line and not line[0].isspace():
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
            self.first_chunk = time.perf_counter() - self.call.started
            self.sink.start(self.status, self._relayed_headers())
        self.chunks += 1
        assert self.meter is not None
        out = self.meter.feed(data)
        if self.rename is not None and out:
            out = self.rename(out)
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
            if err is None and 200 <= response.code < 300:
                err = upstream_failure(502, f"The upstream of model '{self.call.route.model.id}' ended the stream "
                                       "without sending anything (llama-cpp-python does this when the prompt is "
                                       "longer than the model's context).", "upstream_empty_stream")
            retry_after = self.headers_in.get("retry-after")
            err = err or upstream_status_error(response.code, b"".join(self.error_body), self.call.route.model.id,
                                              retry_after)
            self._settle(err.status, "")
            raise err
        tail = meter.finish()
        if tail and self.rename is not None:
            tail = self.rename(tail)
        if tail:
            self.sink.send(tail)
        if meter.done:
            err = None  # a `[DONE]` held back in the tail: `_failure` could not see it yet
        if err is not None and err.status != CLIENT_CLOSED:
            self.sink.send(sse_error_event(f"The stream broke off: {err.message}", err.type, err.code))
        self.sink.end()
        self._settle(err.status if err else self.status, "", meter.usage, meter)

    def _finish_plain(self, response: HTTPResponse) -> None:
        err = self._failure(response)
        body = response.body or b""
        if err is None and not 200 <= response.code < 300:
            err = upstream_status_error(response.code, body, self.call.route.model.id,
                                        self.headers_in.get("retry-after"))
        obj: Any = None
        if err is None and ("json" in self.headers_in.get("content-type", "") or self.call.endpoint.path in KNOWN):
            try:
                obj = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                err = upstream_failure(502, "The upstream answered with invalid JSON.", "upstream_invalid_response")
        if err is not None:
            self._settle(err.status, "")
            raise err
        self.sink.start(response.code, self._relayed_headers())
        self.sink.send(body if self.rename is None else self.rename(body))
        self.sink.end()
        self._settle(response.code, choice_text(obj), find_usage(obj))

    def _settle(
        self, status: int, text: str, usage: tuple[int, int] | None = None, meter: StreamMeter | None = None
    ) -> None:
        """Record the call's usage: exact from upstream, else counted after the response."""
        self.settling = True
        seconds = time.perf_counter() - self.call.started
        latency_ms = seconds * 1000
        self.gw.metrics.settled(self.call.route.model.id, self.call.endpoint.path, status, seconds, self.first_chunk,
                                self.chunks)
        if usage is not None or status >= 400 and meter is None:
            prompt, completion = usage or (0, 0)
            self._record(self._event(status, latency_ms, prompt, completion, False))
            return
        self.gw.in_background(self._count_and_record(status, latency_ms, text, meter))

    async def _count_and_record(self, status: int, latency_ms: float, text: str, meter: StreamMeter | None) -> None:
        """Ask the upstream's tokenizer, each request only while no user call of ours is in flight
        to it (`UpstreamState.quiet`); the call's concurrency slot is free meanwhile."""
        if meter is not None:
            text = meter.completion_text()
        call = self.call
        size, parsed = len(call.payload), []

        def body() -> dict:
            """The call's body, parsed from its payload (held until now) the first time it is needed."""
            if not parsed:
                parsed.append(call.parsed())
                call.payload = b""
            return parsed[0]

        prompt = Prompt(call.prompt_estimate, body)
        upstream = call.upstream or call.route.pool[0]
        self.gw.release_slots(call.ticket)

        async def quiet() -> bool:
            if await upstream.quiet(COUNT_WAIT_SECONDS):
                return True
            log.warning("upstream %s stayed busy for %.0f s; recording an estimate for %s", redact_url(upstream.url),
                        COUNT_WAIT_SECONDS, call.request_id)
            return False

        target = Target(upstream.url, call.route.secret, call.route.model.target_model, quiet)
        try:
            prompt_tokens, completion, estimated = await self.gw.counter.count(
                target, call.endpoint, prompt, text, call.route.model.usage_probe, size)
        except asyncio.CancelledError:
            self._record(self._event(status, latency_ms, *estimate_usage(prompt, text)))
            raise
        except Exception:
            log.exception("token counting failed for %s; recording an estimate", call.request_id)
            prompt_tokens, completion, estimated = estimate_usage(prompt, text)
        call.payload = b""
        self._record(self._event(status, latency_ms, prompt_tokens, completion, estimated))

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
            endpoint=self.call.endpoint.path,
        )
