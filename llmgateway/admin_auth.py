"""Who may use the admin API: admin bearer tokens and admin sessions.

Tokens are random, shown once and stored as a SHA-256 hash (as API keys are). The bootstrap
token comes from an environment secret (`admin.bootstrap_token_env`) so that a fresh install can
be managed before any admin exists; it is compared by hash in constant time and never stored.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping

from .audit import Actor
from .config import AdminConfig, ConfigError
from .errors import GatewayError, unauthorized
from .keys import bearer_key, hash_key
from .records import AdminToken, UserRecord
from .store import Store

log = logging.getLogger("llmgateway.admin")

TOKEN_PREFIX = "lgw-admin-"
TOKEN_PATTERN = re.compile(r"^lgw-admin-[A-Za-z0-9_-]{43}$")
MIN_BOOTSTRAP_LENGTH = 24
BOOTSTRAP_ACTOR = "bootstrap-token"


def make_token(name: str, created_by: str, days: float) -> tuple[str, AdminToken]:
    """A new admin token and its record; the token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    record = AdminToken(id="adm_" + secrets.token_hex(8), name=name, hash=hash_key(token),
                        prefix=token[:len(TOKEN_PREFIX) + 6], created_by=created_by, created=now,
                        expires=now + days * 86400)
    return token, record


def token_view(token: AdminToken, now: float) -> dict:
    return {"id": token.id, "name": token.name, "prefix": token.prefix, "created_by": token.created_by,
            "created": token.created, "expires": token.expires, "last_used": token.last_used,
            "status": token.status(now)}


def bootstrap_hash(config: AdminConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The hash of the bootstrap token, or None when none is set; a too-short one stops the start."""
    value = (os.environ if environ is None else environ).get(config.bootstrap_token_env, "").strip()
    if not value:
        return None
    if len(value) < MIN_BOOTSTRAP_LENGTH:
        raise ConfigError(f"admin.bootstrap_token_env: {config.bootstrap_token_env} must hold at least "
                          f"{MIN_BOOTSTRAP_LENGTH} characters (e.g. openssl rand -hex 24)")
    return hash_key(value)


def authenticate_token(store: Store, bootstrap: str | None, authorization: str, source: str) -> Actor:
    """The actor behind an `Authorization: Bearer` admin token, or a 401 (blocking: run in the pool)."""
    token = bearer_key(authorization)
    if token is None:
        raise unauthorized("Send an admin token as 'Authorization: Bearer TOKEN'.", "missing_admin_token")
    token_hash = hash_key(token)
    if bootstrap is not None and hmac.compare_digest(token_hash, bootstrap):
        return Actor(BOOTSTRAP_ACTOR, "api", source)
    if TOKEN_PATTERN.match(token):
        record = store.admin_token_by_hash(token_hash)
        now = time.time()
        if record is not None and hmac.compare_digest(record.hash, token_hash) and record.usable(now):
            store.touch_admin_token(record.id, now)
            return Actor(f"token:{record.id}", "api", source)
    raise unauthorized("This is not a valid admin token (unknown, revoked or expired).", "invalid_admin_token")


def require_admin(user: UserRecord | None, source: str) -> Actor:
    """The actor behind a browser session: a 401 without one, a 403 unless the person is an admin."""
    if user is None:
        raise unauthorized("Log in first, or send an admin token.", "not_logged_in")
    if not user.admin:
        raise GatewayError(403, "You are not an administrator of this service.", "permission_error", "not_admin")
    return Actor(user.username, "ui", source)
