"""Browser sessions: a signed JWT in a cookie, and the short-lived state of a SAML round trip.

The JWT (HS256, python-jose) makes a session valid on every replica without shared session
storage; logging out records the token's id (`jti`) in the store's claims until the token would
have expired anyway, so a copied cookie stops working at once everywhere. Tokens of different
kinds carry different audiences, so one can never stand in for another.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jose import JWTError, jwt

from ..config import ConfigError, PortalConfig

log = logging.getLogger("llmgateway.sessions")

SESSION_COOKIE = "llmgw_session"
LOGIN_COOKIE = "llmgw_login"
SESSION_AUDIENCE = "llmgw-session"
LOGIN_AUDIENCE = "llmgw-saml-login"
LOGOUT_NAMESPACE = "session-logout"
LOGIN_STATE_SECONDS = 600
MIN_SECRET_LENGTH = 32
ALGORITHM = "HS256"


def load_secret(portal: PortalConfig, environ: Mapping[str, str] | None = None) -> str:
    """The session signing secret, from its file or environment variable.

    Without one the portal refuses to start, except with the development login, where a fresh
    random secret is used (sessions then end when the process does).
    """
    env = os.environ if environ is None else environ
    if portal.session_secret_file:
        try:
            secret = Path(portal.session_secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"portal.session_secret_file: cannot read: {exc.strerror}") from None
        where = "portal.session_secret_file"
    else:
        secret = env.get(portal.session_secret_env, "").strip()
        where = f"portal.session_secret_env ({portal.session_secret_env})"
    if not secret and portal.dev_login:
        log.warning("no session secret set: using a random one, so sessions end when this process does")
        return secrets.token_urlsafe(32)
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{where}: the session secret must be at least {MIN_SECRET_LENGTH} characters "
                          f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return secret


class Sessions:
    """Issues and verifies the session and SAML login-state tokens of one gateway."""

    def __init__(self, secret: str, lifetime: float, issuer: str) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self.issuer = issuer

    def _encode(self, audience: str, lifetime: float, claims: dict[str, Any], now: float | None) -> tuple[str, dict]:
        now = time.time() if now is None else now
        body = {**claims, "iss": self.issuer, "aud": audience, "iat": int(now), "exp": int(now + lifetime),
                "jti": secrets.token_urlsafe(16)}
        return jwt.encode(body, self._secret, algorithm=ALGORITHM), body

    def _decode(self, token: str, audience: str) -> dict | None:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=audience, issuer=self.issuer,
                                options={"require_exp": True, "require_jti": True, "require_aud": True})
        except JWTError:
            return None
        return claims if isinstance(claims.get("sub"), str) or audience == LOGIN_AUDIENCE else None

    def issue(self, username: str, saml: dict[str, str] | None = None, now: float | None = None) -> tuple[str, dict]:
        """A session token for `username`; `saml` keeps what single logout must send back to the IdP."""
        return self._encode(SESSION_AUDIENCE, self.lifetime, {"sub": username, "saml": saml or {}}, now)

    def verify(self, token: str) -> dict | None:
        """The claims of a valid, unexpired session token (not yet checked against logouts), else None."""
        return self._decode(token, SESSION_AUDIENCE)

    def issue_login_state(self, request_id: str, next_path: str, kind: str = "login") -> str:
        """What the browser carries through the IdP: our request's ID (for InResponseTo) and where to go after."""
        return self._encode(LOGIN_AUDIENCE, LOGIN_STATE_SECONDS, {"rid": request_id, "next": next_path,
                                                                  "kind": kind}, None)[0]

    def verify_login_state(self, token: str, kind: str = "login") -> dict | None:
        claims = self._decode(token, LOGIN_AUDIENCE)
        if claims is None or claims.get("kind") != kind or not isinstance(claims.get("rid"), str):
            return None
        return claims
