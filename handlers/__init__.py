"""The HTTP layer: thin Tornado handlers, one module per door."""

from __future__ import annotations

from typing import Any

from tornado.web import StaticFileHandler

from llmgateway.admin import Admin
from llmgateway.gateway import Gateway
from llmgateway.identity import Callers
from llmgateway.portal import Portal

from . import portal as portal_door
from . import saml
from .admin import AdminPageHandler, admin_routes
from .base import NotFoundHandler
from .guard import GuardedApplication
from .health import HealthHandler, ReadyHandler
from .openai import ModelsHandler, ProxyHandler


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
        (r"/static/((?:portal|admin|chart)\.(?:css|js)|favicon\.svg)", StaticFileHandler,
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
