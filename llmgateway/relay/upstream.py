"""The upstream HTTP client: pycurl through Tornado's CurlAsyncHTTPClient.

One client per process, sized by `upstream.max_clients`. Each transfer gets libcurl's progress
callback so a client that goes away stops the upstream transfer at once, and a low-speed limit so
an upstream that goes silent mid-stream is cut after `upstream.idle_timeout` seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPRequest, HTTPResponse

from ..config import UpstreamConfig

CONNECT_ERRORS = {pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST}
TIMEOUT_ERRORS = {pycurl.E_OPERATION_TIMEDOUT}
MAX_UPSTREAM_BODY = 256 * 1024 * 1024
MIN_UPLOAD_BUFFER, MAX_UPLOAD_BUFFER = 16 * 1024, 64 * 1024


class _Progress:
    """libcurl's progress callback: aborts a transfer whose client left, or that went silent.

    libcurl calls it on every chunk and once a second while idle (see `prepare`); a non-zero return aborts
    the transfer. Idle is judged on received bytes (libcurl's own low-speed limit averages over
    several seconds and cut a 1 s idle limit only after about 7 s). It applies to streams only:
    a non-streaming upstream is silent until its whole answer is ready.
    """

    __slots__ = ("cancelled", "idle", "idle_cut", "last_bytes", "last_change")

    def __init__(self, cancelled: Callable[[], bool], idle: float) -> None:
        self.cancelled = cancelled
        self.idle = idle
        self.idle_cut = False
        self.last_bytes = 0
        self.last_change = time.monotonic()

    def __call__(self, _dltotal: int, dlnow: int, _ultotal: int, _ulnow: int) -> int:
        if self.cancelled():
            return 1
        if self.idle:
            now = time.monotonic()
            if dlnow != self.last_bytes:
                self.last_bytes = dlnow
                self.last_change = now
            elif now - self.last_change > self.idle:
                self.idle_cut = True
                return 1
        return 0


class GatewayCurlClient(CurlAsyncHTTPClient):
    """Tornado's curl client with cheaper timer handling.

    libcurl moves its timer on almost every socket event; Tornado answers each move with a
    remove and an add on the IOLoop's heap, and turns "delete the timer" (-1) into an immediate
    spurious wake-up. With hundreds of open streams that was a visible share of the relay's CPU.
    An earlier wake-up than libcurl asked for is harmless (it re-syncs on every wake-up), so a
    timer is only moved when libcurl wants it sooner.
    """

    _deadline = 0.0

    def _set_timeout(self, msecs: int) -> None:
        if msecs < 0:
            if self._timeout is not None:
                self.io_loop.remove_timeout(self._timeout)
                self._timeout = None
            return
        deadline = self.io_loop.time() + msecs / 1000.0
        if self._timeout is not None and self._deadline <= deadline:
            return
        super()._set_timeout(msecs)
        self._deadline = deadline


class UpstreamClient:
    """Thin wrapper that applies the gateway's timeouts and cancellation to every fetch."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.http = GatewayCurlClient(
            force_instance=True, max_clients=config.max_clients, max_body_size=MAX_UPSTREAM_BODY
        )

    async def fetch(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        cancelled: Callable[[], bool],
        streaming_callback: Callable[[bytes], None] | None = None,
        header_line: Callable[[bytes], None] | None = None,
    ) -> HTTPResponse:
        """POST and return the response; a transport failure comes back as code 599 with `.error`.

        `header_line` receives each raw response header line synchronously, before any body
        chunk reaches `streaming_callback` (Tornado's own header_callback is queued and can
        arrive after the first chunks). It replaces Tornado's header parsing, which costs more
        than the gateway needs, so a response fetched with it has no `.headers`.
        """
        idle = self.config.idle_timeout if streaming_callback else 0.0
        watch = _Progress(cancelled, idle)
        wake_window = max(1, int(idle or self.config.request_timeout))

        def prepare(curl: pycurl.Curl) -> None:
            curl.setopt(pycurl.NOPROGRESS, 0)
            curl.setopt(pycurl.XFERINFOFUNCTION, watch)
            # libcurl only runs its speed check (and so the progress callback) every second
            # while a transfer is idle if a low-speed limit is set; its own cut comes later
            # than ours and is reported as a timeout too.
            curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
            curl.setopt(pycurl.LOW_SPEED_TIME, wake_window)
            # libcurl's upload buffer, held for the whole transfer: its 64 KiB default would be
            # most of the memory an open stream with a small prompt holds, while a large prompt
            # sent in 16 KiB pieces costs both sides a wake-up per piece (about 50 µs of the
            # gateway's CPU and 70 of the upstream's for 216 KB). So the body's size, within
            # libcurl's least and a 64 KiB most.
            curl.setopt(pycurl.UPLOAD_BUFFERSIZE, min(MAX_UPLOAD_BUFFER, max(MIN_UPLOAD_BUFFER, len(body))))
            if header_line is not None:
                curl.setopt(pycurl.HEADERFUNCTION, header_line)

        request = HTTPRequest(
            url,
            method="POST",
            body=body,
            headers=headers,
            connect_timeout=self.config.connect_timeout,
            request_timeout=self.config.request_timeout,
            streaming_callback=streaming_callback,
            prepare_curl_callback=prepare,
            decompress_response=False,
            follow_redirects=False,
            allow_ipv6=True,
        )
        try:
            return await self.http.fetch(request, raise_error=False)
        except CurlError as exc:
            error = exc
            if watch.idle_cut:
                error = CurlError(pycurl.E_OPERATION_TIMEDOUT, f"upstream sent nothing for {watch.idle:.0f} s")
            return HTTPResponse(request, 599, error=error)

    async def post_json(self, url: str, obj: Any, secret: str, timeout: float = 30.0) -> tuple[int, Any]:
        """A JSON call made off the hot path (tokenize endpoints, the usage probe); (status, parsed
        or None). Written with orjson: it can carry a whole prompt again."""
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        request = HTTPRequest(
            url,
            method="POST",
            body=orjson.dumps(obj),
            headers=headers,
            connect_timeout=self.config.connect_timeout,
            request_timeout=timeout,
            follow_redirects=False,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except CurlError:
            return 599, None
        if not response.body:
            return response.code, None
        try:
            return response.code, json.loads(response.body)
        except ValueError:
            return response.code, None

    async def probe(self, url: str, timeout: float) -> tuple[int, str | None]:
        """GET `url` for an active health check: (status, None), or (599, what went wrong).

        The body is read and dropped. No secret is sent: health paths (vLLM's /health) need
        none, and a refusal (401, 404) still shows the server is there."""
        request = HTTPRequest(
            url,
            method="GET",
            headers={"User-Agent": "llmgateway"},
            connect_timeout=min(self.config.connect_timeout, timeout),
            request_timeout=timeout,
            follow_redirects=False,
            streaming_callback=lambda _chunk: None,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except CurlError as exc:
            return 599, _transport_problem(exc.errno)
        if response.code == 599:
            return 599, _transport_problem(curl_errno(response))
        return response.code, None

    def close(self) -> None:
        self.http.close()


def _transport_problem(errno: int | None) -> str:
    """A fixed description of a transport failure (libcurl's own text names the host)."""
    if errno in TIMEOUT_ERRORS:
        return "timed out"
    if errno in CONNECT_ERRORS:
        return "could not connect"
    return "connection failed"


def curl_errno(response: HTTPResponse) -> int | None:
    """libcurl's error number for a transport failure, else None."""
    if response.code != 599 or response.error is None:
        return None
    return getattr(response.error, "errno", None)


def never_connected(response: HTTPResponse) -> bool:
    """True when the transfer failed before a connection existed (safe to try another upstream)."""
    errno = curl_errno(response)
    if errno in CONNECT_ERRORS:
        return True
    message = str(response.error or "")
    return errno in TIMEOUT_ERRORS and ("Connection timed out" in message or "Failed to connect" in message)
