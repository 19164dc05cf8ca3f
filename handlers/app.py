"""App assembly: the routes, and `serve`: open the store, build the gateway, serve HTTP, run the
jobs, shut down cleanly.

The one place where the core and the web layer meet: the core never imports `handlers`, so the
`llmgateway` command (`main`) is this module's, handing `serve` to the core's command line.
The upstreams' active health checks run as one task of their own (`catalog.health_checks`).
SIGTERM turns new requests away with 503 (`shutdown`: the listener stays open, so nobody waiting
in the accept queue is reset), lets open streams finish for `server.drain_seconds`, cuts the rest
(which still records what they produced), closes the listener, then flushes the usage ledger.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import StaticFileHandler

from llmgateway.admin.service import Admin
from llmgateway.auth.admin_tokens import bootstrap_hash
from llmgateway.auth.identity import Callers
from llmgateway.catalog.health_checks import HealthChecker
from llmgateway.cli import main as cli
from llmgateway.config import Config, ConfigError
from llmgateway.gateway import Gateway
from llmgateway.ops.log import log_request, log_request_json, quiet_access_log, setup_logging
from llmgateway.ops.metrics import Metrics
from llmgateway.ops.process import tune_gc
from llmgateway.ops.scheduler import make_scheduler
from llmgateway.portal.service import Portal
from llmgateway.relay.proxy import SHUTTING_DOWN
from llmgateway.store import open_store

from . import portal as portal_door
from . import saml
from .admin import AdminPageHandler, admin_routes
from .base import NotFoundHandler
from .guard import MAX_HEADER_BLOCK, GuardedApplication, ShutdownGate
from .health import HealthHandler, ReadyHandler
from .metrics import make_metrics_app
from .openai import ModelsHandler, ProxyHandler

log = logging.getLogger("llmgateway")

CUT_GRACE = 5.0
# However quickly the drain ends, new requests are answered 503 this long after SIGTERM, so the
# connections already queued for accept get their answer before the listener closes.
REFUSE_AT_LEAST = 1.0


def make_app(gateway: Gateway, portal: Portal | None = None, admin: Admin | None = None,
             **settings: Any) -> GuardedApplication:
    """All routes of the gateway; the portal's, SAML's and the admin UI's only when the portal is enabled."""
    args = {"gateway": gateway}
    routes: list[tuple] = [
        (r"/healthz", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
        (r"/v1/models", ModelsHandler, args),
        (r"/v1/models/(.+)", ModelsHandler, args),
        (r"/v1/(.+)", ProxyHandler, args),
    ]
    admin = admin or Admin(gateway, None)
    routes += admin_routes(gateway, admin, portal)
    settings["callers"] = Callers(gateway, portal, admin.bootstrap_hash)
    if portal is not None:
        routes += portal_routes(gateway, portal)
        settings.update(xsrf_cookies=True,
                        xsrf_cookie_kwargs={"secure": portal.config.secure_cookies, "samesite": "Strict"})
    server = gateway.config.server
    return GuardedApplication(routes, default_handler_class=NotFoundHandler, default_handler_args=args,
                              api_body_cap=server.max_body_bytes, max_headers=server.max_headers,
                              max_header_bytes=server.max_header_bytes,
                              body_timeout=server.body_timeout_seconds, refused=gateway.metrics.refused, **settings)


def portal_routes(gateway: Gateway, portal: Portal) -> list[tuple]:
    args = {"gateway": gateway, "portal": portal}
    routes: list[tuple] = [
        (r"/", portal_door.RootHandler, args),
        (r"/portal", portal_door.PortalPageHandler, args),
        (r"/portal/logged-out", portal_door.LoggedOutHandler, args),
        (r"/portal/logout", saml.LogoutHandler, args),
        (r"/portal/api/me", portal_door.MeHandler, args),
        (r"/portal/api/terms", portal_door.TermsHandler, args),
        (r"/portal/api/keys", portal_door.KeysHandler, args),
        (r"/portal/api/keys/([A-Za-z0-9_-]{1,64})", portal_door.KeyHandler, args),
        (r"/portal/api/usage", portal_door.UsageHandler, args),
        (r"/static/((?:portal|admin|common)\.(?:css|js)|favicon\.svg)", StaticFileHandler,
         {"path": str(portal_door.STATIC)}),
        (r"/favicon\.ico", portal_door.FaviconHandler, args),
        (r"/admin", AdminPageHandler, args),
    ]
    if portal.config.dev_login:
        routes.append((r"/portal/dev-login", portal_door.DevLoginHandler, args))
    else:
        routes += [
            (r"/saml/metadata", saml.MetadataHandler, args),
            (r"/saml/login", saml.LoginHandler, args),
            (r"/saml/acs", saml.AcsHandler, args),
            (r"/saml/logout", saml.LogoutHandler, args),
            (r"/saml/sls", saml.SlsHandler, args),
        ]
    return routes


def listen_metrics(gateway: Gateway) -> HTTPServer | None:
    """The metrics listener (`[metrics] listen`), if configured: its own application and port."""
    metrics, where = gateway.metrics, gateway.config.metrics
    if not isinstance(metrics, Metrics):
        return None
    server = HTTPServer(make_metrics_app(metrics), idle_connection_timeout=75)
    try:
        server.listen(where.port, where.host)
    except OSError as exc:
        raise ConfigError(f"metrics.listen: cannot listen on {where.host}:{where.port}: {exc.strerror}") from None
    return server


async def serve(config: Config) -> None:
    if config.server.log_format != "text":
        setup_logging(logging.getLevelName(logging.getLogger().level), config.server.log_format)
    store = open_store(config.store_url)
    store.init()
    gateway = Gateway(config, store)
    if not config.server.access_log:
        quiet_access_log()
    try:
        portal = await gateway.in_thread(Portal.build, gateway) if config.portal is not None else None
        admin = Admin(gateway, bootstrap_hash(config.admin))
    except ConfigError:
        gateway.close()
        raise
    app = make_app(gateway, portal, admin,
                   log_function=log_request_json if config.server.log_format == "json" else log_request)
    gate = ShutdownGate(app, gateway.metrics.refused)
    server = HTTPServer(gate, max_body_size=config.server.max_body_bytes * 2, max_header_size=MAX_HEADER_BLOCK,
                        idle_connection_timeout=75)
    # The port is taken now (a clash is a start-up error), but nothing is accepted before the
    # gateway has started: a call admitted before the budgets are loaded from the store could
    # spend them again after a restart. Clients wait in the accept queue meanwhile.
    try:
        sockets = bind_sockets(config.server.port, config.server.host)
    except OSError as exc:
        gateway.close()
        raise ConfigError(f"server.listen: cannot listen on {config.server.host}:{config.server.port}: "
                          f"{exc.strerror}") from None
    try:
        metrics_server = listen_metrics(gateway)
        await gateway.start()
    except ConfigError:
        for sock in sockets:
            sock.close()
        gateway.close()
        raise
    server.add_sockets(sockets)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    scheduler = make_scheduler(gateway, loop)
    scheduler.start()
    checks = asyncio.ensure_future(HealthChecker(gateway.router, gateway.upstream).run())
    tune_gc()
    log.info(
        "LLM Gateway listening on %s:%d (store %s, %d models)",
        config.server.host, config.server.port, config.store_url.split(":", 1)[0], len(config.models),
    )
    if metrics_server is not None:
        log.info("metrics at http://%s:%d/metrics", config.metrics.host, config.metrics.port)
    if portal is not None:
        log.info("portal at %s/portal, admin UI at %s/admin%s", portal.config.public_url, portal.config.public_url,
                 " (development login: anyone can log in as anyone)" if portal.config.dev_login else "")
    await stopping.wait()
    log.info("shutting down: draining %d open calls for up to %.0f s", gateway.in_flight, config.server.drain_seconds)
    gate.closing = True
    refusing_since = loop.time()
    await gateway.drain(config.server.drain_seconds)
    if gateway.in_flight:
        gateway.cancel_all(SHUTTING_DOWN)
        await gateway.drain(CUT_GRACE)
    await asyncio.sleep(max(0.0, REFUSE_AT_LEAST - (loop.time() - refusing_since)))
    server.stop()
    await gateway.cancel_settlements()
    scheduler.shutdown(wait=False)
    checks.cancel()
    await asyncio.gather(checks, return_exceptions=True)
    written = await gateway.flush()
    log.info("final usage flush: %d events written, %d left spooled", written, len(gateway.ledger.spooled_files()))
    await server.close_all_connections()
    if metrics_server is not None:
        metrics_server.stop()
        await metrics_server.close_all_connections()
    await gateway.stop_shared()
    gateway.close()


def main(argv: list[str] | None = None) -> int:
    """The `llmgateway` command, with this layer's `serve` for `llmgateway serve`."""
    return cli.main(argv, serve=serve)
