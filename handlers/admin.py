"""The admin door: the REST API under /admin/api/v1 (with its OpenAPI document) and the admin UI page.

Who is calling comes from the one lookup every door uses (`llmgateway.auth.identity`): an admin
bearer token (checked first: a browser never adds one by itself, so no XSRF token is needed), or
else the session cookie of a person with the admin role, and then every state-changing call must
carry the XSRF token (`X-XSRFToken`). The bootstrap token reaches only the routes that declare
`bootstrap_methods`. Errors come back in the OpenAI error shape, as on /v1 and in the portal.
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.web import HTTPError, RequestHandler

from llmgateway.admin.service import Admin
from llmgateway.audit import Actor
from llmgateway.auth.caller import ADMIN, Caller
from llmgateway.auth.key_service import routed_models
from llmgateway.auth.sessions import SESSION_COOKIE
from llmgateway.errors import GatewayError, bad_request
from llmgateway.gateway import Gateway
from llmgateway.jsonbody import load_json
from llmgateway.portal.service import Portal

from .base import BaseHandler, BodyReader
from .openapi import spec
from .portal import PageHandler

log = logging.getLogger("llmgateway.admin")

PREFIX = "/admin/api/v1"


class AdminApiHandler(BodyReader, BaseHandler):
    """What every admin API route shares: who is calling, their XSRF check, JSON in and out."""

    admin: Admin
    portal: Portal | None
    caller: Caller
    bootstrap_methods: tuple[str, ...] = ()
    """The methods of this route the bootstrap token may call (see `llmgateway.auth.admin_tokens`)."""
    xsrf_refusal = GatewayError(403, "Send the XSRF token (X-XSRFToken header) with changes made through a browser "
                                "session.", "permission_error", "xsrf_missing")

    def initialize(self, gateway: Gateway, admin: Admin, portal: Portal | None) -> None:  # type: ignore[override]
        self.gateway = gateway
        self.admin = admin
        self.portal = portal

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_xsrf_cookie(self) -> None:
        """Checked in `prepare`, after the caller is known (so the anonymous get 401, not 403)."""

    async def prepare(self) -> None:
        source = self.request.remote_ip or ""
        authorization = self.request.headers.get("Authorization")
        try:
            self.caller = await self.callers.admin(authorization, self.get_cookie(SESSION_COOKIE), source)
            if self.caller.session is not None and self.request.method not in ("GET", "HEAD", "OPTIONS"):
                RequestHandler.check_xsrf_cookie(self)
            if not self.caller.may(ADMIN) and self.request.method not in self.bootstrap_methods:
                raise GatewayError(403, "The bootstrap token only makes the first admin: POST /tokens with "
                                   '{"name", "owner"}; then use that admin\'s token.', "permission_error",
                                   "bootstrap_only")
        except (GatewayError, HTTPError) as exc:
            self.refuse(exc)
            return
        self.check_content_length()

    @property
    def actor(self) -> Actor:
        """Who the audit log records for this call."""
        return self.caller.actor

    def args(self) -> dict[str, str | None]:
        """The query as sent (Tornado's own getters turn control characters into spaces, which
        would hide them from the checks)."""
        return {name: self.decode_argument(values[-1], name) for name, values in self.request.query_arguments.items()}

    def body(self) -> Any:
        return load_json(self.request_body())



class MeHandler(AdminApiHandler):
    bootstrap_methods = ("GET",)

    def get(self) -> None:
        caller = self.caller
        self.write_json({"actor": caller.actor.name, "via": caller.actor.via, "person": caller.person,
                         "rights": sorted(caller.rights), "expires": caller.expires})


class OpenApiHandler(AdminApiHandler):
    def get(self) -> None:
        self.write_json(spec(self.gateway.config, sorted(routed_models(self.gateway))))


class UsersHandler(AdminApiHandler):
    async def get(self) -> None:
        self.write_json(await self.admin.list_users(self.args()))


class UserHandler(AdminApiHandler):
    async def get(self, username: str) -> None:
        self.write_json(await self.admin.show_user(username))

    async def patch(self, username: str) -> None:
        self.write_json(await self.admin.update_user(self.caller, username, self.body()))


class KeysHandler(AdminApiHandler):
    async def get(self) -> None:
        self.write_json(await self.admin.list_keys(self.args()))

    async def post(self) -> None:
        self.write_json(await self.admin.create_key(self.actor, self.body()), 201)


class KeyHandler(AdminApiHandler):
    async def get(self, key_id: str) -> None:
        self.write_json(await self.admin.show_key(key_id))

    async def patch(self, key_id: str) -> None:
        self.write_json(await self.admin.update_key(self.actor, key_id, self.body()))


class KeyRevokeHandler(AdminApiHandler):
    """POST, not DELETE: a revoked key stays listed (and readable) with its status."""

    async def post(self, key_id: str) -> None:
        self.write_json(await self.admin.revoke_key(self.actor, key_id))


class ModelsHandler(AdminApiHandler):
    async def get(self) -> None:
        self.write_json(await self.admin.models.list_models())

    async def post(self) -> None:
        self.write_json(await self.admin.models.create_model(self.actor, self.body()), 201)


class ModelHandler(AdminApiHandler):
    async def get(self, model_id: str) -> None:
        self.write_json(await self.admin.models.show_model(model_id))

    async def patch(self, model_id: str) -> None:
        self.write_json(await self.admin.models.update_model(self.actor, model_id, self.body()))

    async def delete(self, model_id: str) -> None:
        self.write_json(await self.admin.models.delete_model(self.actor, model_id))


class UsageHandler(AdminApiHandler):
    async def get(self) -> None:
        args = self.args()
        form = args.pop("format", None) or "json"
        if form not in ("json", "csv"):
            raise bad_request("format must be json or csv.", "format")
        if form == "json":
            self.write_json(await self.admin.usage.report(args))
            return
        text = await self.admin.usage.csv(args)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="usage.csv"')
        self.finish(text)


class UsageEventsHandler(AdminApiHandler):
    async def get(self) -> None:
        self.write_json(await self.admin.usage.events(self.args()))


class AuditHandler(AdminApiHandler):
    async def get(self) -> None:
        self.write_json(await self.admin.find_audit(self.args()))


class TokensHandler(AdminApiHandler):
    bootstrap_methods = ("POST",)

    async def get(self) -> None:
        self.write_json(await self.admin.list_tokens())

    async def post(self) -> None:
        self.write_json(await self.admin.create_token(self.caller, self.body()), 201)


class TokenRevokeHandler(AdminApiHandler):
    async def post(self, token_id: str) -> None:
        self.write_json(await self.admin.revoke_token(self.actor, token_id))


class AdminPageHandler(PageHandler):
    """GET /admin: the admin UI (static/admin.html) for a logged-in admin."""

    def get(self) -> None:
        if self.session is None:
            self.redirect(self.login_url("/admin"))
            return
        if self.caller is None or not self.caller.may(ADMIN):
            self.message_page(403, "Administrators only", "You are logged in, but you are not an administrator of "
                              "this service.", self.path("/portal"), "Back to your keys")
            return
        self.send_page("admin.html")


SEGMENT = r"([^/]+)"


def admin_routes(gateway: Gateway, admin: Admin, portal: Portal | None) -> list[tuple]:
    args = {"gateway": gateway, "admin": admin, "portal": portal}
    return [
        (PREFIX + r"/openapi\.json", OpenApiHandler, args),
        (PREFIX + r"/me", MeHandler, args),
        (PREFIX + r"/users", UsersHandler, args),
        (PREFIX + r"/users/" + SEGMENT, UserHandler, args),
        (PREFIX + r"/keys", KeysHandler, args),
        (PREFIX + r"/keys/" + SEGMENT, KeyHandler, args),
        (PREFIX + r"/keys/" + SEGMENT + "/revoke", KeyRevokeHandler, args),
        (PREFIX + r"/models", ModelsHandler, args),
        (PREFIX + r"/models/" + SEGMENT, ModelHandler, args),
        (PREFIX + r"/usage", UsageHandler, args),
        (PREFIX + r"/usage/events", UsageEventsHandler, args),
        (PREFIX + r"/audit", AuditHandler, args),
        (PREFIX + r"/tokens", TokensHandler, args),
        (PREFIX + r"/tokens/" + SEGMENT + "/revoke", TokenRevokeHandler, args),
    ]
