"""Who is calling: one lookup for every door, returning one caller with its current rights.

As JupyterHub's `get_current_user` does, each door asks the same object: the /v1 API with an API
key, the portal with a session cookie, the admin API with an admin token or an admin's session.
The answer is a `Caller`: the actor the audit log records, the person whose rights apply, and
those rights as the store says *now*. A credential never carries rights of its own: an admin
token acts with its owner's current role, so removing the role or disabling the person ends
every token they made, on every replica, at the next call. Nothing else in a handler derives
identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..audit import Actor
from ..errors import GatewayError, unauthorized
from .admin_tokens import authenticate_token
from .caller import ADMIN, API, PORTAL, Caller

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..portal.service import Portal
    from ..records import KeyRecord


def _key_caller(record: KeyRecord, owner_limits: dict[str, float]) -> Caller:
    return Caller(Actor(record.owner, API, ""), record.owner, frozenset({API}), record.expires, key=record,
                  owner_limits=owner_limits)


class Callers:
    """The one lookup every handler uses (see `handlers.base.BaseHandler.callers`)."""

    def __init__(self, gateway: Gateway, portal: Portal | None, bootstrap_hash: str | None) -> None:
        self.gateway = gateway
        self.portal = portal
        self.bootstrap_hash = bootstrap_hash

    async def api_key(self, authorization: str | None) -> Caller:
        """The /v1 door: the key's owner, with the key and the owner's limits (or a 401)."""
        return _key_caller(*await self.gateway.authenticate(authorization))

    def api_key_cached(self, authorization: str | None) -> Caller | None:
        """`api_key` without an await, when this process has the key cached (None: ask `api_key`)."""
        cached = self.gateway.authenticate_cached(authorization)[1]
        return None if cached is None else _key_caller(*cached)

    async def session(self, cookie: str | None, source: str) -> Caller | None:
        """The portal's door: the person behind a session cookie, or None (no, bad or ended session,
        unknown or disabled person)."""
        if self.portal is None:
            return None
        session = await self.portal.session(cookie)
        if session is None:
            return None
        user = session.user
        rights = frozenset({PORTAL, ADMIN}) if user.admin else frozenset({PORTAL})
        return Caller(Actor(user.username, "portal", source), user.username, rights, session=session)

    async def admin(self, authorization: str | None, cookie: str | None, source: str) -> Caller:
        """The admin door: an admin token if the request carries `Authorization` (or there is no
        portal), else an admin's session. A 401 for no or a bad credential, a 403 for a session
        without the admin role."""
        if authorization is not None or self.portal is None:
            return await self.gateway.in_thread(authenticate_token, self.gateway.store, self.bootstrap_hash,
                                                authorization or "", source)
        caller = await self.session(cookie, source)
        if caller is None:
            raise unauthorized("Log in first, or send an admin token.", "not_logged_in")
        if not caller.may(ADMIN):
            raise GatewayError(403, "You are not an administrator of this service.", "permission_error", "not_admin")
        return Caller(Actor(caller.person or "", "ui", source), caller.person, caller.rights, session=caller.session)
