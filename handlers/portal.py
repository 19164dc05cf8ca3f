"""The portal door: the page (static/portal.html), its JSON API, and the development login.

JSON calls answer errors as `{"error": {"message", "type", "param", "code"}}`, which the page
shows in place; state-changing calls need the XSRF token (`X-XSRFToken` header).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tornado.web import HTTPError

from llmgateway.audit import Actor
from llmgateway.auth.sessions import SESSION_COOKIE
from llmgateway.errors import GatewayError
from llmgateway.jsonbody import load_json
from llmgateway.portal.service import safe_next

from .base import BaseHandler, BodyReader, SessionHandler

log = logging.getLogger("llmgateway.portal")



def _static_dir() -> Path:
    """static/ of the source tree, else where `pip install .` put it (as JupyterHub does: share/)."""
    source = Path(__file__).resolve().parent.parent / "static"
    return source if source.is_dir() else Path(sys.prefix) / "share" / "llmgateway" / "static"


STATIC = _static_dir()


class PageHandler(SessionHandler):
    """Pages that need a logged-in person send everyone else to the login first."""

    pages: dict[str, bytes] = {}

    def login_url(self, next_path: str) -> str:
        door = "/portal/dev-login" if self.portal.config.dev_login else "/saml/login"
        return self.path(door) + "?" + urlencode({"next": next_path})

    def send_page(self, name: str) -> None:
        """One of static/'s pages (read once), with the _xsrf cookie its script sends back."""
        self.xsrf_token  # noqa: B018
        if name not in PageHandler.pages:
            PageHandler.pages[name] = (STATIC / name).read_bytes()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PageHandler.pages[name])


class RootHandler(PageHandler):
    """GET /: the portal is the site's front page."""

    def get(self) -> None:
        self.redirect(self.path("/portal"))


class PortalPageHandler(PageHandler):
    """GET /portal: the single-page portal (terms, keys, usage)."""

    def get(self) -> None:
        if self.session is None:
            self.redirect(self.login_url("/portal"))
            return
        self.send_page("portal.html")


class FaviconHandler(PageHandler):
    """GET /favicon.ico, which browsers ask for by themselves: the site's icon is an SVG."""

    def get(self) -> None:
        self.redirect(self.path("/static/favicon.svg"), permanent=True)


class LoggedOutHandler(PageHandler):
    """GET /portal/logged-out: where logout ends."""

    def get(self) -> None:
        self.message_page(200, "You are logged out", "Your session on this site has ended.",
                          self.path("/portal"), "Log in again")


class DevLoginHandler(PageHandler):
    """GET/POST /portal/dev-login: log in as anyone, for trying the portal without an IdP.

    Mounted only with `portal.dev_login = true`, which the configuration refuses unless the
    gateway listens on loopback only.
    """

    def get(self) -> None:
        self.xsrf_token  # noqa: B018  (sets the _xsrf cookie the form sends back)
        self.render_page("dev_login.html", heading="Development login",
                         next=safe_next(self.get_query_argument("next", None)), error="")

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        next_path = safe_next(self.get_body_argument("next", None))
        if not username or len(username) > 200:
            self.render_page("dev_login.html", 400, heading="Development login", next=next_path,
                             error="Enter a username (at most 200 characters).")
            return
        try:
            token, claims = await self.portal.log_in(username,
                                                     self.get_body_argument("display_name", "").strip()[:200], "",
                                                     self.get_body_argument("admin", "") == "on")
        except GatewayError as err:
            self.message_page(err.status, "You cannot use this service", err.message)
            return
        self.set_private_cookie(SESSION_COOKIE, token, claims["exp"])
        log.warning("development login of %s", username)
        self.redirect(self.path(next_path), status=303)


class JsonHandler(BodyReader, SessionHandler):
    """The portal's JSON API: a session is required; errors come back as JSON for the page to show."""

    def check_xsrf_cookie(self) -> None:
        """Checked in `prepare`, after the session (so that a lapsed session gets 401, not 403)."""

    async def prepare(self) -> None:
        await super().prepare()
        try:
            if self.session is None:
                raise HTTPError(401, "Your session has ended; log in again.")
            if self.request.method not in ("GET", "HEAD", "OPTIONS"):
                SessionHandler.check_xsrf_cookie(self)
        except HTTPError as exc:
            self.refuse(exc)
            return
        self.check_content_length()

    def json_body(self) -> Any:
        return load_json(self.request_body())

    error_codes = {401: "not_logged_in", 403: "forbidden"}
    write_error_body = BaseHandler.write_error_body

    def actor(self) -> Actor:
        assert self.caller is not None
        return self.caller.actor


class MeHandler(JsonHandler):
    """GET /portal/api/me: who is logged in, the current terms, the models and the key limit."""

    def get(self) -> None:
        assert self.session is not None
        self.write_json(self.portal.profile(self.session.user))


class TermsHandler(JsonHandler):
    """POST /portal/api/terms {"version": "..."}: accept this version of the terms of use."""

    async def post(self) -> None:
        assert self.session is not None
        self.write_json(await self.portal.accept_terms(self.session.user, self.json_body(), self.actor()))


class KeysHandler(JsonHandler):
    """GET /portal/api/keys: my keys. POST {"name", "models"?, "expires_days"?}: a new key, shown once."""

    async def get(self) -> None:
        assert self.session is not None
        self.write_json(await self.portal.list_keys(self.session.user))

    async def post(self) -> None:
        assert self.session is not None
        self.write_json(await self.portal.create_key(self.session.user, self.json_body(), self.actor()), 201)


class KeyHandler(JsonHandler):
    """DELETE /portal/api/keys/{id}: revoke one of my keys (refused by this process at once)."""

    async def delete(self, key_id: str) -> None:
        assert self.session is not None
        self.write_json(await self.portal.revoke_key(self.session.user, key_id, self.actor()))


class UsageHandler(JsonHandler):
    """GET /portal/api/usage?days=30: my tokens and cost per day and model, totals, quota."""

    async def get(self) -> None:
        assert self.session is not None
        self.write_json(await self.portal.usage(self.session.user, self.get_query_argument("days", None)))
