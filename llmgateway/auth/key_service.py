"""API keys, whichever door asks: made (shown once, only the hash stored), changed, revoked, shown.

Three doors manage keys: the portal (a person, their own keys), the admin API and UI (any key)
and the CLI (on the store directly, beside or without a running gateway). They parse what they
were sent in their own way and hand the values here, so that the record, the store writes, the
per-person cap and the audit entry are made in one place.

The store is synchronous. `KeyBook` does each step on it directly: the CLI calls it as it is,
and `KeyService` runs the same step in the gateway's store pool and then drops the changed key
from every replica's caches (the CLI announces the change itself, having no caches of its own).

Which models a key may name differs by door, for reasons of the door's own; each reason is one
function below, and each door passes its list to its parsing (and so to the membership check).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import audit
from ..audit import Actor
from ..errors import GatewayError, not_found
from ..records import KeyRecord
from ..store import Store
from .keys import make_record

if TYPE_CHECKING:
    from ..config import Config
    from ..gateway import Gateway

ADMIN_ONLY = ("owner", "limits")


# --- which models a door may grant ----------------------------------------------------------------


def visible_models(gateway: Gateway) -> list[str]:
    """The portal's: what the person can see and call now, the active routed models. An inactive
    model is not offered to people until an admin switches it on."""
    return [r.model.id for r in gateway.router.visible()]


def routed_models(gateway: Gateway) -> list[str]:
    """The admin API's: every routed model, active or not, so that an admin can hand out keys for a
    model before switching it on."""
    return list(gateway.router.routes)


def configured_or_stored_models(config: Config, store: Store) -> set[str]:
    """The CLI's: the configured models and every model stored through the admin API. The CLI runs
    without a router (beside a gateway, or before one has started), so it cannot tell which stored
    models load or are active; it accepts any of them."""
    return {m.id for m in config.models} | {m.id for m in store.list_models()}


# --- views ----------------------------------------------------------------------------------------


def key_view(record: KeyRecord, now: float, detail: bool = True) -> dict[str, Any]:
    """A key as the portal and the admin API show it, never its hash. `detail` adds what only admins
    see, the owner and the key's own limits; a person is shown their keys without them."""
    view = {"id": record.id, "owner": record.owner, "name": record.name, "prefix": record.prefix,
            "models": record.models, "created": record.created, "expires": record.expires,
            "last_used": record.last_used, "status": record.status(now), "limits": record.limits}
    return view if detail else {k: v for k, v in view.items() if k not in ADMIN_ONLY}


def stored_view(record: KeyRecord, now: float) -> dict[str, Any]:
    """Every field of the record but the hash, with its status: the CLI's JSON, for scripts that read
    the store's own fields."""
    return {k: v for k, v in vars(record).items() if k != "hash"} | {"status": record.status(now)}


# --- the steps, on the store ----------------------------------------------------------------------


def _too_many(cap: int) -> GatewayError:
    return GatewayError(409, f"You already have {cap} active keys, the most allowed. Revoke one you no longer "
                        "use to create another.", "invalid_request_error", "key_limit_reached")


class KeyBook:
    """Each key operation as one blocking call on the store, audit entry included."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, actor: Actor, owner: str, name: str, models: list[str], expires_days: float | None = None,
               limits: dict[str, float] | None = None, cap: int | None = None) -> tuple[str, KeyRecord]:
        """Make and store a key; the key is returned once and only its hash is kept.

        `models` and `limits` come checked by the door. `limits` is given by the admin door only,
        and is then recorded in the audit entry. With `cap`, the owner's usable keys are counted
        before the insert and again after it: another replica may have inserted at the same moment,
        and then the new key is revoked unseen and a 409 raised, so the cap is never exceeded.
        Raises `ValueError` for an empty owner or name, or a non-positive expiry.
        """
        if cap is not None:
            self._check_cap(owner, cap, 0)
        key, record = make_record(owner, name, models, expires_days)
        if limits is not None:
            record.limits = limits
        self.store.insert_key(record)
        if cap is not None:
            try:
                self._check_cap(owner, cap, 1)
            except GatewayError:
                self.store.revoke_key(record.id)
                raise
        details: dict[str, Any] = {"owner": record.owner, "name": record.name, "models": models,
                                   "expires": record.expires}
        if limits is not None:
            details["limits"] = limits
        audit.record(self.store, actor, "key.create", record.id, details)
        return key, record

    def _check_cap(self, owner: str, cap: int, mine: int) -> None:
        """409 unless the owner's usable keys, less `mine` just made, leave room for one more."""
        now = time.time()
        if sum(1 for r in self.store.list_keys(owner, True) if r.usable(now)) - mine >= cap:
            raise _too_many(cap)

    def change(self, actor: Actor, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Apply checked `changes` (name, models, expires, limits) in one write; None for no such key."""
        record = self.store.update_key(key_id, changes)
        if record is not None:
            audit.record(self.store, actor, "key.update", key_id, {"owner": record.owner, "changes": changes})
        return record

    def revoke(self, actor: Actor, key_id: str, owner: str | None = None) -> KeyRecord | None:
        """Revoke a key, only if it is `owner`'s when one is named; None for no such key (of theirs)."""
        if owner is not None and not any(r.id == key_id for r in self.store.list_keys(owner)):
            return None
        record = self.store.revoke_key(key_id)
        if record is not None:
            audit.record(self.store, actor, "key.revoke", key_id, {"owner": record.owner})
        return record


# --- the same steps for the gateway's doors -------------------------------------------------------


class KeyService:
    """`KeyBook`'s steps in the store pool, for the portal and the admin API; a changed or revoked
    key is dropped from every replica's caches (through Redis at once, if configured)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.book = KeyBook(gateway.store)
        self._capped = asyncio.Lock()

    async def get(self, key_id: str) -> KeyRecord:
        """The key with this id, or a 404."""
        record = await self.gateway.in_thread(self.book.store.get_key, key_id)
        if record is None:
            raise not_found("key", "key_not_found")
        return record

    async def create(self, actor: Actor, owner: str, name: str, models: list[str], expires_days: float | None = None,
                     limits: dict[str, float] | None = None, cap: int | None = None) -> tuple[str, KeyRecord]:
        """See `KeyBook.create`; with `cap`, creations in this process also wait for each other, so
        that only creations on other replicas can race (and are then undone)."""
        create = partial(self.book.create, actor, owner, name, models, expires_days, limits, cap)
        if cap is None:
            return await self.gateway.in_thread(create)
        async with self._capped:
            return await self.gateway.in_thread(create)

    async def change(self, actor: Actor, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        record = await self.gateway.in_thread(self.book.change, actor, key_id, changes)
        if record is None:
            raise not_found("key", "key_not_found")
        await self.gateway.forget_key(record)
        return record

    async def revoke(self, actor: Actor, key_id: str, owner: str | None = None) -> KeyRecord:
        """Revoke a key (only `owner`'s, when named: a person revokes their own), refused by every
        replica from now on."""
        record = await self.gateway.in_thread(self.book.revoke, actor, key_id, owner)
        if record is None:
            if owner is not None:
                raise GatewayError(404, "No such key among yours.", "invalid_request_error", "key_not_found")
            raise not_found("key", "key_not_found")
        await self.gateway.forget_key(record)
        return record
