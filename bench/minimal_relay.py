"""A minimal Tornado + pycurl relay: the floor under the gateway's cost, for `python -m bench.run --baseline`.

No auth, no validation, no routing, no metering, no access log: one `tornado.web.RequestHandler`
whose ``post(path)`` forwards the body to ``<upstream>/v1/<path>`` through one
`CurlAsyncHTTPClient` and writes the answer back. A request whose body says ``"stream": true``
(a byte search, not a JSON parse) is relayed chunk by chunk, each written and flushed as it
arrives, as ``text/event-stream``; any other answer is written whole with the upstream's status.
Like the gateway it freezes the start-up objects out of the garbage collector and raises its
thresholds, so the difference between the two is the gateway's own work.

    python -m bench.minimal_relay --listen 127.0.0.1:0 --upstream http://127.0.0.1:MOCKPORT

prints ``READY <port>`` on stdout when it serves; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from bench.serving import serve_until_signal
from llmgateway.ops.process import tune_gc

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT = 3600.0


class Relay(RequestHandler):
    """POST /v1/<path>: the same POST to the upstream, the answer back."""

    def initialize(self, upstream: str, client: CurlAsyncHTTPClient) -> None:
        self.upstream = upstream
        self.client = client

    async def post(self, path: str) -> None:
        body = self.request.body
        stream = STREAM_RE.search(body) is not None
        if stream:
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")

        def relay(chunk: bytes) -> None:
            self.write(chunk)
            self.flush()

        response = await self.client.fetch(
            HTTPRequest(
                self.upstream + "/v1/" + path,
                method="POST",
                body=body,
                headers=HEADERS,
                request_timeout=REQUEST_TIMEOUT,
                streaming_callback=relay if stream else None,
            ),
            raise_error=False,
        )
        if stream:
            return
        if response.code == 599:
            self.set_status(502)
            self.write({"error": {"message": str(response.error), "type": "upstream_error"}})
            return
        self.set_status(response.code)
        self.set_header("Content-Type", response.headers.get("Content-Type", "application/json"))
        self.write(response.body or b"")


def make_app(upstream: str, max_clients: int) -> Application:
    """The relay application; one curl client for all requests."""
    client = CurlAsyncHTTPClient(force_instance=True, max_clients=max_clients)
    return Application(
        [(r"/v1/(.*)", Relay, {"upstream": upstream.rstrip("/"), "client": client})],
        log_function=lambda handler: None,
    )


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, with the gateway's garbage-collector tuning."""
    server = HTTPServer(make_app(args.upstream, args.max_clients), idle_connection_timeout=75)
    tune_gc()
    await serve_until_signal(server, args.listen)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.minimal_relay`."""
    p = argparse.ArgumentParser(prog="python -m bench.minimal_relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks a free one [127.0.0.1:0]")
    p.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:8001")
    p.add_argument("--max-clients", type=int, default=1000, help="concurrent upstream transfers [1000]")
    args = p.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
