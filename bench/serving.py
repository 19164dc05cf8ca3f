"""What the bench's own servers share: bind on loopback, say READY, run until a signal."""

from __future__ import annotations

import asyncio
import signal

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


async def serve_until_signal(server: HTTPServer, listen: str) -> None:
    """Bind `listen` (port 0 picks one), print `READY <port>` for whoever started us, and serve
    until SIGTERM or SIGINT. A port in use stops us with one line (exit status 1)."""
    host, _, port = listen.rpartition(":")
    try:
        sockets = bind_sockets(int(port), host or "127.0.0.1", backlog=4096)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {listen}: {exc.strerror} (is another one running?)") from None
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()
