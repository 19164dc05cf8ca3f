"""The SAML door: SP metadata, login, the assertion consumer service and single logout.

The decisions (is this response valid, who is this person, may they in) are made in
`llmgateway.auth.saml` and `llmgateway.portal.service`; these handlers move cookies and redirects.
"""

from __future__ import annotations

import logging
import time

from llmgateway.auth.saml import SamlError, ServiceProvider
from llmgateway.auth.sessions import LOGIN_COOKIE, LOGIN_STATE_SECONDS, SESSION_COOKIE
from llmgateway.errors import GatewayError
from llmgateway.portal.service import DEFAULT_NEXT, safe_next

from .base import SessionHandler

log = logging.getLogger("llmgateway.saml")


class SamlHandler(SessionHandler):
    """Base of the SAML handlers: the round-trip state cookie and the refusal page."""

    @property
    def sp(self) -> ServiceProvider:
        assert self.portal.sp is not None
        return self.portal.sp

    def set_state_cookie(self, token: str) -> None:
        """The SAML round-trip state. The IdP posts the response from its own site, and a browser
        sends a SameSite=Lax cookie with no cross-site POST, so this cookie is SameSite=None (which
        browsers accept only with Secure); on plain http (a laptop, IdP on the same host) Lax."""
        same_site = "None" if self.portal.config.secure_cookies else "Lax"
        self.set_private_cookie(LOGIN_COOKIE, token, time.time() + LOGIN_STATE_SECONDS, same_site)

    def refuse(self, status: int, heading: str, message: str) -> None:
        self.clear_private_cookie(LOGIN_COOKIE)
        self.message_page(status, heading, message, self.path("/saml/login"), "Log in again")


class MetadataHandler(SamlHandler):
    """GET /saml/metadata: the SP metadata to give the identity provider."""

    async def get(self) -> None:
        xml = await self.gateway.in_thread(self.sp.metadata)
        self.set_header("Content-Type", "application/samlmetadata+xml")
        self.finish(xml)


class LoginHandler(SamlHandler):
    """GET /saml/login?next=/path: send the browser to the IdP with a fresh AuthnRequest."""

    async def get(self) -> None:
        next_path = safe_next(self.get_query_argument("next", None))
        if self.session is not None:
            self.redirect(self.path(next_path))
            return
        url, request_id = await self.gateway.in_thread(self.sp.login_redirect)
        self.set_state_cookie(self.portal.sessions.issue_login_state(request_id, next_path))
        self.redirect(url)


class AcsHandler(SamlHandler):
    """POST /saml/acs: the IdP's signed response; a session for an eligible person."""

    def check_xsrf_cookie(self) -> None:
        """The IdP's cross-site POST cannot carry our XSRF token; the signed response, its
        InResponseTo bound to this browser's login state, and one-time assertion IDs protect it."""

    async def post(self) -> None:
        state = self.portal.sessions.verify_login_state(self.get_cookie(LOGIN_COOKIE) or "")
        request_id = state["rid"] if state else None
        next_path = safe_next(state["next"]) if state else DEFAULT_NEXT
        form = {"SAMLResponse": self.get_body_argument("SAMLResponse", "")}
        try:
            assertion = await self.gateway.in_thread(self.sp.process_response, form, request_id)
        except SamlError as exc:
            log.warning("SAML response refused: %s", exc)
            self.refuse(400, "Login failed", "The answer from your identity provider could not be accepted, so "
                        "you are not logged in. Start the login again; if this keeps happening, tell the "
                        "service's administrators.")
            return
        if not await self.portal.claim_assertion(assertion):
            log.warning("SAML assertion %s replayed; refused", assertion.assertion_id)
            self.refuse(400, "Login failed", "This login answer was already used. Start the login again.")
            return
        self.clear_private_cookie(LOGIN_COOKIE)
        person = assertion.identity
        if not person.eligible:
            log.info("SAML login of %s refused: not eligible", person.username)
            self.message_page(403, "You cannot use this service", person.reason)
            return
        try:
            token, claims = await self.portal.log_in(
                person.username, person.display_name, person.email, person.is_admin,
                {"nid": assertion.name_id, "nidf": assertion.name_id_format, "sidx": assertion.session_index},
            )
        except GatewayError as err:
            log.info("SAML login of %s refused: %s", person.username, err.code)
            self.message_page(err.status, "You cannot use this service", err.message)
            return
        self.set_private_cookie(SESSION_COOKIE, token, claims["exp"])
        log.info("SAML login of %s", person.username)
        self.redirect(self.path(next_path), status=303)


class LogoutHandler(SamlHandler):
    """/saml/logout and /portal/logout: GET shows a page with the button, POST (with the XSRF
    token, so no other site can log anyone out) ends the session here (for every replica at
    once), then, after a SAML login, asks the IdP to end its session too (SP-initiated single
    logout)."""

    def get(self) -> None:
        if self.session is None:
            self.redirect(self.path("/portal/logged-out"))
            return
        self.xsrf_token  # noqa: B018  (sets the _xsrf cookie the form sends back)
        self.render_page("logout.html", heading="Log out", action=self.path(self.request.path),
                         username=self.session.user.username)

    async def post(self) -> None:
        session = self.session
        self.clear_private_cookie(SESSION_COOKIE)
        if session is None:
            self.redirect(self.path("/portal/logged-out"))
            return
        await self.portal.log_out(session.claims)
        log.info("logout of %s", session.user.username)
        sp = self.portal.sp
        slo = None if sp is None else await self.gateway.in_thread(sp.logout_redirect, session.claims.get("saml", {}))
        if slo is None:
            self.redirect(self.path("/portal/logged-out"))
            return
        url, request_id = slo
        self.set_state_cookie(self.portal.sessions.issue_login_state(request_id, "", "logout"))
        self.redirect(url)


class SlsHandler(SamlHandler):
    """GET /saml/sls: the IdP's LogoutResponse to our request, or its own LogoutRequest."""

    async def get(self) -> None:
        state = self.portal.sessions.verify_login_state(self.get_cookie(LOGIN_COOKIE) or "", "logout")
        query = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        try:
            url = await self.gateway.in_thread(self.sp.process_logout, query, self.request.query,
                                               state["rid"] if state else None)
        except SamlError as exc:
            log.warning("SAML logout message refused: %s", exc)
            self.message_page(400, "Logout not confirmed", "The identity provider's logout message could not be "
                              "accepted. You are logged out of this site; close the browser to end your login at "
                              "the identity provider too.", self.path("/portal"), "Back to the portal")
            return
        self.clear_private_cookie(LOGIN_COOKIE)
        if self.session is not None:
            await self.portal.log_out(self.session.claims)
            self.clear_private_cookie(SESSION_COOKIE)
        self.redirect(url or self.path("/portal/logged-out"))
