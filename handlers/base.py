"""What every handler shares: the gateway object and OpenAI-style error rendering."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tornado.web import HTTPError, RequestHandler

from llmgateway.errors import GatewayError, error_body
from llmgateway.gateway import Gateway
from llmgateway.portal import Portal, Session
from llmgateway.sessions import SESSION_COOKIE

log = logging.getLogger("llmgateway.handlers")

REASONS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


class BaseHandler(RequestHandler):
    """JSON in, JSON out; every error in the OpenAI error shape."""

    gateway: Gateway
    gone = False

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:
        """The API door authenticates with a bearer key, which a browser never adds by itself, so
        a cross-site form cannot act for anyone here: no XSRF token is asked for. Handlers that
        trust the session cookie check it (see `SessionHandler`)."""

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def send_gateway_error(self, err: GatewayError) -> None:
        """Answer with `err` unless a response has already started or the client is gone."""
        if self._headers_written or self.gone:
            return
        self.clear()
        self.clear_header("Server")
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.write_json(err.body(), err.status)

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """Tornado's own version logs the full URI and request repr; the query string can carry
        a key, so only method and path are logged here."""
        if isinstance(value, HTTPError):
            if value.log_message:
                detail = value.log_message % value.args if value.args else value.log_message
                log.warning("%d %s %s: %s", value.status_code, self.request.method, self.request.path, detail)
            return
        log.error("uncaught exception in %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb))

    error_codes: dict[int, str] = {}

    def error_message(self, status_code: int, exc: BaseException | None) -> str:
        """What an error Tornado raised itself says to the client (never internals on a 5xx)."""
        if isinstance(exc, HTTPError) and exc.log_message and status_code < 500:
            return exc.log_message % exc.args if exc.args else exc.log_message
        if status_code >= 500:
            return "The gateway failed to handle the request."
        return self._reason

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors Tornado raises itself (405, unexpected exceptions) in the OpenAI shape."""
        message = self.error_message(status_code, kwargs.get("exc_info", (None, None, None))[1])
        kind = REASONS.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(message, kind, self.error_codes.get(status_code))))


class NotFoundHandler(BaseHandler):
    """Any path the gateway does not serve."""

    def prepare(self) -> None:
        self.send_gateway_error(GatewayError(404, f"Unknown path {self.request.path!r}.", "invalid_request_error",
                                             "unknown_path"))


TEMPLATES = Path(__file__).resolve().parent / "templates"


class SessionHandler(BaseHandler):
    """What the portal and SAML handlers share: the person behind the session cookie, cookie
    settings, the XSRF check, and pages for errors (as JupyterHub's base handler does)."""

    portal: Portal
    session: Session | None = None

    def initialize(self, gateway: Gateway, portal: Portal) -> None:  # type: ignore[override]
        self.gateway = gateway
        self.portal = portal

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

    def check_xsrf_cookie(self) -> None:
        """Every state-changing request of a logged-in browser carries the XSRF token."""
        RequestHandler.check_xsrf_cookie(self)

    async def prepare(self) -> None:
        self.session = await self.portal.session(self.get_cookie(SESSION_COOKIE))
        if self.session is not None:
            self.current_user = self.session.user

    def get_template_path(self) -> str:
        return str(TEMPLATES)

    def path(self, path: str) -> str:
        """A path of this site as the browser sees it (under `portal.public_url`'s prefix)."""
        return self.portal.config.base_path + path

    def set_private_cookie(self, name: str, value: str, expires: float, same_site: str = "Lax") -> None:
        self.set_cookie(name, value, expires=expires, path=self.path("/") or "/", httponly=True,
                        secure=self.portal.config.secure_cookies, samesite=same_site)

    def clear_private_cookie(self, name: str) -> None:
        self.clear_cookie(name, path=self.path("/") or "/")

    def render_page(self, template: str, status: int = 200, **values: Any) -> None:
        """A server-rendered page (autoescaped), marked loudly when the development login is on."""
        self.set_status(status)
        self.render(template, title=self.portal.config.title, dev_login=self.portal.config.dev_login,
                    base=self.portal.config.base_path, **values)

    def message_page(self, status: int, heading: str, message: str, link: str = "", link_text: str = "") -> None:
        self.render_page("message.html", status, heading=heading, message=message, link=link, link_text=link_text)

    def error_message(self, status_code: int, exc: BaseException | None) -> str:
        if status_code == 403 and isinstance(exc, HTTPError) and "xsrf" in (exc.log_message or "").lower():
            return "This page is out of date or did not come from this site. Reload it and try again."
        return super().error_message(status_code, exc)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Pages answer errors with a page; the JSON API (see `JsonHandler`) with a JSON error."""
        message = self.error_message(status_code, kwargs.get("exc_info", (None, None, None))[1])
        self.message_page(status_code, f"{status_code} {self._reason}", message, self.path("/portal"), "Back")
