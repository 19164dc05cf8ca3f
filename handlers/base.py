"""What every handler shares: the gateway object, who is calling, and OpenAI-style error rendering."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from tornado.web import HTTPError, RequestHandler, stream_request_body

from llmgateway.auth.caller import Caller
from llmgateway.auth.identity import Callers
from llmgateway.auth.sessions import SESSION_COOKIE
from llmgateway.errors import CONTENT_TYPE, GatewayError
from llmgateway.gateway import Gateway
from llmgateway.portal.service import Portal, Session

from .guard import SMALL_BODY

log = logging.getLogger("llmgateway.handlers")

UNEXPECTED = "The gateway failed to handle the request."


class BaseHandler(RequestHandler):
    """JSON in, JSON out; every error in the OpenAI error shape."""

    gateway: Gateway
    gone = False

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    @property
    def callers(self) -> Callers:
        """The one answer to "who is calling?" for every door (see `llmgateway.auth.identity`)."""
        return self.application.settings["callers"]

    def check_xsrf_cookie(self) -> None:
        """The API door authenticates with a bearer key, which a browser never adds by itself, so
        a cross-site form cannot act for anyone here: no XSRF token is asked for. Handlers that
        trust the session cookie check it (see `SessionHandler`)."""

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def send_gateway_error(self, err: GatewayError) -> None:
        """Answer with `err`, caught in the handler, unless a response has already started or the
        client is gone."""
        if self._headers_written or self.gone:
            return
        self.clear()
        self.answer_error(err)

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """Tornado's own version logs the full URI and request repr; the query string can carry
        a key, so only method and path are logged here. A `GatewayError` is an answer, not a fault."""
        if isinstance(value, GatewayError):
            return
        if isinstance(value, HTTPError):
            if value.log_message:
                detail = value.log_message % value.args if value.args else value.log_message
                log.warning("%d %s %s: %s", value.status_code, self.request.method, self.request.path, detail)
            return
        log.error("uncaught exception in %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb))

    error_codes: dict[int, str] = {}
    """This door's `code` for the statuses Tornado raises itself (401, 403, ...)."""
    xsrf_refusal: GatewayError | None = None
    """What a failed XSRF check answers at this door (None where no XSRF token is asked for)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Whatever ended the request (a raised `GatewayError`, a Tornado `HTTPError`, an unexpected
        exception) as one error, written as this door writes errors."""
        self.answer_error(self.error_for(status_code, kwargs.get("exc_info", (None, None, None))[1]))

    def error_for(self, status_code: int, exc: BaseException | None) -> GatewayError:
        """The one mapping to the error a client sees: a `GatewayError` as raised; a failed XSRF
        check as this door words it; a 405 naming the methods served (also in Allow); another
        `HTTPError` with its message; anything else as a 500 telling nothing of the internals."""
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, HTTPError) and status_code == 403 and self.xsrf_refusal is not None \
                and "xsrf" in (exc.log_message or "").lower():
            return self.xsrf_refusal
        if status_code == 405:
            return self.method_not_allowed()
        code = self.error_codes.get(status_code)
        if status_code >= 500:
            return GatewayError(status_code, UNEXPECTED, "server_error", code)
        if isinstance(exc, HTTPError) and exc.log_message:
            return GatewayError(status_code, exc.log_message % exc.args if exc.args else exc.log_message,
                                "invalid_request_error", code)
        return GatewayError(status_code, self._reason, "invalid_request_error", code)

    def allowed_methods(self) -> str:
        """The methods this handler serves, for a 405's Allow header."""
        return ", ".join(m for m in ("GET", "POST", "PATCH", "DELETE")
                         if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower()))

    def method_not_allowed(self) -> GatewayError:
        return GatewayError(405, f"{self.request.method} is not allowed here (allowed: {self.allowed_methods()}).",
                            "invalid_request_error", "method_not_allowed", headers={"Allow": self.allowed_methods()})

    def answer_error(self, err: GatewayError) -> None:
        """The error's status and own headers (Allow, Retry-After, ...), then its body as this door
        writes it (`write_error_body`)."""
        if self.get_status() != err.status:
            self.set_status(err.status)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.write_error_body(err)

    def write_error_body(self, err: GatewayError) -> None:
        """The JSON doors' writer: the OpenAI error object."""
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(err.encoded())


@stream_request_body
class BodyReader(RequestHandler):
    """Read the body only after `prepare` has authenticated the caller, and only up to `body_cap`.

    Tornado reads a whole body before `prepare` unless the handler streams it; streaming it lets
    every door refuse an anonymous caller from the headers alone. The connection itself is capped
    a little higher (see `handlers.guard`), so that a body past the cap still gets a clean 413.
    """

    body_cap = 64 * 1024
    _parts: list[bytes] | None = None
    _size = 0
    _refusal: Exception | None = None

    def refuse(self, exc: Exception) -> None:
        """Refuse the call from its headers (raised from `prepare`).

        A body of at most 64 KiB (any door takes one that size), or none, is read and dropped
        first, so that the client reads the answer and keeps its connection; a larger one, or one
        of unknown length, is never read: the answer comes at once and the connection closes.
        """
        declared = self.request.headers.get("Content-Length", "0")
        if not declared.isdigit() or int(declared) > SMALL_BODY or "Transfer-Encoding" in self.request.headers:
            raise exc
        self._refusal = exc
        self.body_cap = -1
        setattr(self, self.request.method.lower(), self._answer_refusal)

    def _answer_refusal(self, *_args: Any, **_kwargs: Any) -> None:
        assert self._refusal is not None
        raise self._refusal

    def data_received(self, chunk: bytes) -> None:
        if self._parts is None:
            self._parts = []
        self._size += len(chunk)
        if self._size <= self.body_cap:
            self._parts.append(chunk)
        else:
            self._parts = []

    _body_clock: Any = None

    def watch_body(self, seconds: float) -> None:
        """Close the connection unless the body has arrived within `seconds` (see `handlers.guard`)."""
        self._body_clock = asyncio.get_running_loop().call_later(seconds, self._body_too_slow)

    def body_arrived(self) -> None:
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None

    def _body_too_slow(self) -> None:
        log.info("%s %s: the body did not arrive in time; connection closed", self.request.method,
                 self.request.path[:200])
        self._body_clock = None
        self.request.connection.close()  # type: ignore[union-attr]

    def on_connection_close(self) -> None:
        """Also ends Tornado's wait for the rest of a body that will never come (a cut trickle)."""
        self.body_arrived()
        super().on_connection_close()

    def check_content_length(self) -> None:
        """A 413 before reading, when the declared length is already past the cap."""
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.body_cap:
            raise too_large(self.body_cap)

    def finish(self, chunk: Any = None) -> Any:
        """An answer given from `prepare` comes before the body was read, and Tornado then closes
        the connection; say so, or the client would send its next request on it."""
        if self._prepared_future is not None and not self._prepared_future.done():
            self.set_header("Connection", "close")
        return super().finish(chunk)

    def request_body(self) -> bytes:
        """The whole body, or a 413 if it was larger than the cap."""
        if self._size > self.body_cap:
            raise too_large(self.body_cap)
        return b"".join(self._parts or ())

    def drop_body(self) -> None:
        """Let go of the raw body once it is parsed (streams can outlive it by minutes)."""
        self._parts = None


def too_large(cap: int) -> GatewayError:
    return GatewayError(413, f"The request body is larger than {cap} bytes.", "invalid_request_error",
                        "request_too_large")


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
    caller: Caller | None = None

    def initialize(self, gateway: Gateway, portal: Portal) -> None:  # type: ignore[override]
        self.gateway = gateway
        self.portal = portal
        self.set_header("Content-Security-Policy", self.content_policy())

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", self.content_policy())

    def content_policy(self) -> str:
        """Same-origin everything, except that a form may end at the IdP's logout service:
        logging out is a POST redirected there, and browsers check form-action on every redirect
        of a submission. (Tornado sets default headers before `initialize`, hence the getattr.)"""
        portal: Portal | None = getattr(self, "portal", None)
        idp = portal.sp.logout_origin if portal is not None and portal.sp is not None else ""
        return ("default-src 'self'; base-uri 'none'; "
                f"form-action 'self'{' ' + idp if idp else ''}; frame-ancestors 'none'")

    def check_xsrf_cookie(self) -> None:
        """Every state-changing request of a logged-in browser carries the XSRF token."""
        RequestHandler.check_xsrf_cookie(self)

    async def prepare(self) -> None:
        self.caller = await self.callers.session(self.get_cookie(SESSION_COOKIE), self.request.remote_ip or "")
        if self.caller is not None:
            self.session = self.caller.session

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

    xsrf_refusal = GatewayError(403, "This page is out of date or did not come from this site. Reload it and try "
                                "again.", "invalid_request_error", "forbidden")

    def write_error_body(self, err: GatewayError) -> None:
        """The pages' writer: the error as a page (the JSON API, see `JsonHandler`, answers JSON)."""
        self.message_page(err.status, f"{err.status} {self._reason}", err.message, self.path("/portal"), "Back")
