"""Admin bearer tokens: made, shown once, checked against their owner's current rights.

Tokens are random, shown once and stored as a SHA-256 hash (as API keys are). Every token
belongs to an admin and acts with that person's rights as they are at each call. The bootstrap
token comes from an environment secret (`admin.bootstrap_token_env`) so that a fresh install can
get its first admin; it is compared by hash in constant time, never stored, may do nothing but
make the first admin and their token, and stops working once any admin exists.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping

from ..audit import Actor
from ..config import AdminConfig, ConfigError
from ..errors import unauthorized
from ..records import AdminToken
from ..store import Store
from .caller import ADMIN, BOOTSTRAP, Caller
from .keys import bearer_key, hash_key

log = logging.getLogger("llmgateway.admin")

TOKEN_PREFIX = "lgw-admin-"
TOKEN_PATTERN = re.compile(r"^lgw-admin-[A-Za-z0-9_-]{43}$")
MIN_BOOTSTRAP_LENGTH = 24
BOOTSTRAP_ACTOR = "bootstrap-token"


def make_token(name: str, created_by: str, days: float, owner: str, parent: str = "",
               not_after: float | None = None) -> tuple[str, AdminToken]:
    """A new admin token of `owner` and its record; the token is returned once and never stored.

    It expires after `days`, or at `not_after` (its parent's expiry) if that comes first.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    expires = now + days * 86400
    if not_after is not None:
        expires = min(expires, not_after)
    record = AdminToken(id="adm_" + secrets.token_hex(8), name=name, hash=hash_key(token),
                        prefix=token[:len(TOKEN_PREFIX) + 6], created_by=created_by, created=now,
                        expires=expires, owner=owner, parent=parent)
    return token, record


def token_view(token: AdminToken, now: float) -> dict:
    return {"id": token.id, "name": token.name, "prefix": token.prefix, "created_by": token.created_by,
            "owner": token.owner, "parent": token.parent or None, "created": token.created,
            "expires": token.expires, "last_used": token.last_used, "status": token.status(now)}


def bootstrap_hash(config: AdminConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The hash of the bootstrap token, or None when none is set; a too-short one stops the start."""
    value = (os.environ if environ is None else environ).get(config.bootstrap_token_env, "").strip()
    if not value:
        return None
    if len(value) < MIN_BOOTSTRAP_LENGTH:
        raise ConfigError(f"admin.bootstrap_token_env: {config.bootstrap_token_env} must hold at least "
                          f"{MIN_BOOTSTRAP_LENGTH} characters (e.g. openssl rand -hex 24)")
    return hash_key(value)


def admin_exists(store: Store) -> bool:
    """Whether anyone holds the admin role (from the IdP's rule or granted): the bootstrap token's end."""
    return store.find_users(admin=True, limit=1)[1] > 0


def authenticate_token(store: Store, bootstrap: str | None, authorization: str, source: str) -> Caller:
    """The caller behind an `Authorization: Bearer` admin token, or a 401 (blocking: run in the pool).

    An admin token acts for its owner, so the owner's current record is read at every use: a
    person who lost the admin role or was disabled has no working token left, on any replica.
    A token minted by another token stops with it (revoked or expired).
    """
    token = bearer_key(authorization)
    if token is None:
        raise unauthorized("Send an admin token as 'Authorization: Bearer TOKEN'.", "missing_admin_token")
    token_hash = hash_key(token)
    if bootstrap is not None and hmac.compare_digest(token_hash, bootstrap):
        if admin_exists(store):
            raise unauthorized("The bootstrap token only makes the first admin, and an admin exists: use an admin "
                               "token, an admin's session or the CLI.", "bootstrap_spent")
        return Caller(Actor(BOOTSTRAP_ACTOR, "api", source), None, frozenset({BOOTSTRAP}))
    if TOKEN_PATTERN.match(token):
        record = store.admin_token_by_hash(token_hash)
        now = time.time()
        if record is not None and hmac.compare_digest(record.hash, token_hash) and record.usable(now):
            problem = _owner_problem(store, record) or _parent_problem(store, record, now)
            if problem:
                raise unauthorized(f"This admin token no longer works: {problem}.", "invalid_admin_token")
            store.touch_admin_token(record.id, now)
            return Caller(Actor(f"token:{record.id}", "api", source), record.owner, frozenset({ADMIN}),
                          record.expires, token_id=record.id)
    raise unauthorized("This is not a valid admin token (unknown, revoked or expired).", "invalid_admin_token")


def _owner_problem(store: Store, record: AdminToken) -> str:
    if not record.owner:
        return "it belongs to no one (made before tokens had owners); make a new one"
    owner = store.get_user(record.owner)
    if owner is None or not owner.admin:
        return "its owner is not an administrator any more"
    if owner.disabled:
        return "its owner has been disabled"
    return ""


def _parent_problem(store: Store, record: AdminToken, now: float) -> str:
    """A token minted by a token works only while every token above it does."""
    if not record.parent:
        return ""
    tokens = {t.id: t for t in store.list_admin_tokens()}
    seen = {record.id}
    parent = record.parent
    while parent:
        above = tokens.get(parent)
        if above is None or parent in seen or not above.usable(now):
            return "the token that made it was revoked or has expired"
        seen.add(parent)
        parent = above.parent
    return ""
