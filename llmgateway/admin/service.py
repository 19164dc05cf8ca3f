"""The admin API's core: people, keys, admin tokens and the audit log.

Handlers pass in the acting admin, the query arguments and the JSON body, which is checked here
against its declaration (`bodies`); this answers with plain dicts for JSON or raises a
`GatewayError` (400 naming the field, 404, 409). Every input is checked before anything is
written, and each change is one store write, so a refused or failed request leaves nothing
half-done. Keys are made, changed and revoked by the key service (`auth.key_service`), as at the
portal and in the CLI. Every change is recorded in the audit log.
"""

from __future__ import annotations

import time
from typing import Any

from .. import audit, inputs
from ..audit import VIAS, Actor
from ..auth.admin_tokens import admin_exists, make_token, token_view
from ..auth.caller import BOOTSTRAP, Caller
from ..auth.key_service import KeyService, key_view, routed_models
from ..errors import conflict, not_found
from ..fields import known_models
from ..gateway import Gateway
from ..inputs import Args, page
from ..limits.rules import merged
from ..records import UserRecord
from ..store.base import KEY_STATUSES
from ..usage.reports import UsageReports
from .bodies import KeyChange, KeyCreate, UserChange, token_create
from .models import ModelAdmin


class Admin:
    """What admins may do, for one gateway process."""

    def __init__(self, gateway: Gateway, bootstrap_hash: str | None) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.bootstrap_hash = bootstrap_hash
        self.keys = KeyService(gateway)
        self.models = ModelAdmin(gateway)
        self.usage = UsageReports(gateway)

    # --- people ---------------------------------------------------------------------------

    def user_view(self, user: UserRecord) -> dict[str, Any]:
        sources = [name for name, held in (("idp", user.is_admin), ("granted", user.admin_granted)) if held]
        return {"username": user.username, "display_name": user.display_name, "email": user.email,
                "admin": user.admin, "admin_source": "both" if len(sources) == 2 else (sources or [None])[0],
                "disabled": user.disabled, "created": user.created, "last_login": user.last_login,
                "terms_version": user.agreement_version, "limits": user.limits,
                "effective_limits": merged(self.gateway.config.limits.user, user.limits)}

    async def list_users(self, args: Args) -> dict[str, Any]:
        search = inputs.text_arg(args.get("search"), "search")
        role = inputs.choice_arg(args.get("role"), "role", ("admin", "user"))
        status = inputs.choice_arg(args.get("status"), "status", ("active", "disabled"))
        offset, limit = inputs.paging(args.get("offset"), args.get("limit"))
        users, total = await self.gateway.in_thread(
            lambda: self.store.find_users(search, None if role is None else role == "admin",
                                          None if status is None else status == "disabled", offset, limit))
        return page([self.user_view(u) for u in users], total, offset, limit)

    async def _user(self, username: str) -> UserRecord:
        user = await self.gateway.in_thread(self.store.get_user, username)
        if user is None:
            raise not_found("user", "user_not_found")
        return user

    async def show_user(self, username: str) -> dict[str, Any]:
        user = await self._user(username)
        now = time.time()
        active, total = await self.gateway.in_thread(
            lambda: (self.store.find_keys(owner=username, status="active", now=now, limit=1)[1],
                     self.store.find_keys(owner=username, now=now, limit=1)[1]))
        return {**self.user_view(user), "keys": {"active": active, "total": total},
                "quota": await self.gateway.quota(username, user.limits)}

    async def update_user(self, caller: Caller, username: str, body: Any) -> dict[str, Any]:
        """Grant or remove the admin role, disable or enable, replace limit overrides: all or nothing."""
        actor = caller.actor
        changes = {"admin_granted" if name == "admin" else name: value
                   for name, value in UserChange.parse(body).given().items()}
        user = await self._user(username)
        if username == caller.person and (changes.get("admin_granted") is False or changes.get("disabled")):
            raise conflict("You cannot remove your own admin role or disable yourself; ask another admin.",
                           "self_change", "admin" if "admin_granted" in changes else "disabled")
        if changes.get("admin_granted") is False and user.is_admin:
            raise conflict(f"{username} is an admin by the identity provider's admin rule (saml.admin_values); "
                           "change it there.", "admin_by_idp", "admin")
        updated = await self.gateway.in_thread(self.store.update_user, username, changes)
        if updated is None:
            raise not_found("user", "user_not_found")
        if "disabled" in changes or "limits" in changes:
            await self.gateway.forget_user(username)
        await self.gateway.audit(actor, "user.update", username, {"changes": changes})
        return self.user_view(updated)

    # --- keys -----------------------------------------------------------------------------

    async def list_keys(self, args: Args) -> dict[str, Any]:
        owner = inputs.text_arg(args.get("user"), "user")
        model = inputs.text_arg(args.get("model"), "model")
        status = inputs.choice_arg(args.get("status"), "status", KEY_STATUSES)
        search = inputs.text_arg(args.get("search"), "search")
        offset, limit = inputs.paging(args.get("offset"), args.get("limit"))
        now = time.time()
        keys, total = await self.gateway.in_thread(
            lambda: self.store.find_keys(owner, model, status, search, now, offset, limit))
        return page([key_view(k, now) for k in keys], total, offset, limit)

    async def show_key(self, key_id: str) -> dict[str, Any]:
        return key_view(await self.keys.get(key_id), time.time())

    def _models(self) -> list[str]:
        """The models an admin may grant a key: every routed one (see `routed_models`)."""
        return routed_models(self.gateway)

    async def create_key(self, actor: Actor, body: Any) -> dict[str, Any]:
        """A key for a person (created if they never logged in), shown once."""
        new = KeyCreate.parse(body)
        models = known_models(new.models, self._models())
        key, record = await self.keys.create(actor, new.user, new.name, models, new.expires_days, new.limits)
        return {"key": key, "record": key_view(record, time.time())}

    async def update_key(self, actor: Actor, key_id: str, body: Any) -> dict[str, Any]:
        changes = KeyChange.parse(body).given()
        if "models" in changes:
            changes["models"] = known_models(changes["models"], self._models())
        return key_view(await self.keys.change(actor, key_id, changes), time.time())

    async def revoke_key(self, actor: Actor, key_id: str) -> dict[str, Any]:
        record = await self.keys.revoke(actor, key_id)
        return {"record": key_view(record, time.time())}

    # --- admin tokens ---------------------------------------------------------------------

    async def list_tokens(self) -> dict[str, Any]:
        tokens = await self.gateway.in_thread(self.store.list_admin_tokens)
        now = time.time()
        return {"items": [token_view(t, now) for t in tokens], "total": len(tokens)}

    async def create_token(self, caller: Caller, body: Any) -> dict[str, Any]:
        """A token of the calling admin, shown once; a token made by a token never outlives it.

        The bootstrap token names the `owner` instead: that person becomes the first admin (created
        if they never logged in), and the bootstrap token stops working.
        """
        config = self.gateway.config.admin
        bootstrap = caller.may(BOOTSTRAP)
        new = token_create(self.gateway.config).parse(body, ("owner",) if bootstrap else (), {"bootstrap": bootstrap})
        name = new.name
        days = config.token_days if new.expires_days is None else new.expires_days
        owner = await self._first_admin(caller.actor, new.owner) if bootstrap else caller.person or ""
        token, record = make_token(name, caller.actor.name, float(days), owner, caller.token_id, caller.expires)
        await self.gateway.in_thread(self.store.insert_admin_token, record)
        await self.gateway.audit(caller.actor, "token.create", record.id,
                                 {"name": name, "owner": owner, "expires": record.expires})
        return {"token": token, "record": token_view(record, time.time())}

    async def _first_admin(self, actor: Actor, username: str) -> str:
        """The bootstrap token's one act: grant the first admin the role (409 once anyone has it)."""

        def grant() -> bool:
            if admin_exists(self.store):
                return False
            if self.store.get_user(username) is None:
                self.store.upsert_user(UserRecord(username, created=time.time()))
            self.store.update_user(username, {"admin_granted": True})
            return True

        if not await self.gateway.in_thread(grant):
            raise conflict("An admin exists already; the bootstrap token only makes the first one.",
                           "bootstrap_spent", "owner")
        await self.gateway.audit(actor, "user.update", username, {"changes": {"admin_granted": True}})
        return username

    async def revoke_token(self, actor: Actor, token_id: str) -> dict[str, Any]:
        record = await self.gateway.in_thread(self.store.revoke_admin_token, token_id)
        if record is None:
            raise not_found("admin token", "token_not_found")
        await self.gateway.audit(actor, "token.revoke", token_id, {"name": record.name})
        return {"record": token_view(record, time.time())}

    # --- audit log ------------------------------------------------------------------------

    async def find_audit(self, args: Args) -> dict[str, Any]:
        actor = inputs.text_arg(args.get("actor"), "actor")
        action = inputs.text_arg(args.get("action"), "action")
        target = inputs.text_arg(args.get("target"), "target")
        via = inputs.choice_arg(args.get("via"), "via", VIAS)
        since, until = inputs.ts_range(args.get("since"), args.get("until"))
        offset, limit = inputs.paging(args.get("offset"), args.get("limit"))
        entries, total = await self.gateway.in_thread(
            lambda: self.store.find_audit(actor, action, target, via, since, until, offset, limit))
        return page([audit.entry_view(e) for e in entries], total, offset, limit)
