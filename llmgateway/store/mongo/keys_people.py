"""API keys and the people who own them, on MongoDB."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, fields
from typing import Any

from pymongo import ReturnDocument, UpdateOne

from ...records import KeyRecord, UserRecord
from ..base import KEY_CHANGES, KEY_STATUSES, USER_CHANGES, StoreError
from .connection import ChangeRefused, MongoConnection, all_of, mapped_errors

USER_FIELDS = tuple(f.name for f in fields(UserRecord) if f.name != "username")
# `owner_disabled` is the owner's state, filled in by the gateway: never stored with the key.
KEY_FIELDS = tuple(f.name for f in fields(KeyRecord) if f.name not in ("id", "owner_disabled"))


class MongoKeysAndPeople(MongoConnection):
    """The `KeysAndPeople` part of the MongoDB store."""

    @mapped_errors
    def insert_key(self, record: KeyRecord) -> None:
        self._ensure_user(record.owner, {})
        document = {name: getattr(record, name) for name in KEY_FIELDS}
        document["_id"] = record.id
        self.db.api_keys.insert_one(document)

    @mapped_errors
    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return _key(self._one("keys.by_hash", {"hash": key_hash}))

    @mapped_errors
    def list_keys(self, owner: str | None = None, active_only: bool = False) -> list[KeyRecord]:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if active_only:
            query["active"] = True
        return [_key(d) for d in self._find("keys.all" if owner is None else "keys.of_owner", query)]

    @mapped_errors
    def revoke_key(self, key_id: str) -> KeyRecord | None:
        return self._update_key(key_id, {"active": False})

    def _update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        return _key(
            self.db.api_keys.find_one_and_update(
                {"_id": key_id}, {"$set": changes}, return_document=ReturnDocument.AFTER
            )
        )

    @mapped_errors
    def touch_keys(self, last_used: dict[str, float]) -> None:
        if last_used:
            self.db.api_keys.bulk_write(
                [
                    UpdateOne(
                        {"_id": key_id, "$or": [{"last_used": None}, {"last_used": {"$lt": ts}}]},
                        {"$set": {"last_used": ts}},
                    )
                    for key_id, ts in last_used.items()
                ],
                ordered=False,
            )

    def _ensure_user(self, username: str, values: dict[str, Any], new_user: UserRecord | None = None) -> dict[str, Any]:
        """Set `values` on the user, creating the user first if missing (as `new_user`, or with defaults);
        return the document."""
        new = asdict(new_user or UserRecord(username))
        new.pop("username")
        new["created"] = new["created"] or time.time()
        update: dict[str, Any] = {"$setOnInsert": {k: v for k, v in new.items() if k not in values}}
        if values:
            update["$set"] = values
        return self.db.users.find_one_and_update(
            {"_id": username}, update, upsert=True, return_document=ReturnDocument.AFTER
        )

    @mapped_errors
    def upsert_user(self, user: UserRecord) -> UserRecord:
        values: dict[str, Any] = {"display_name": user.display_name, "email": user.email, "is_admin": user.is_admin}
        if user.last_login is not None:
            values["last_login"] = user.last_login
        return user_from_document(self._ensure_user(user.username, values, user))

    @mapped_errors
    def get_user(self, username: str) -> UserRecord | None:
        document = self._one("users.by_id", {"_id": username})
        return user_from_document(document) if document else None

    @mapped_errors
    def set_agreement(self, username: str, version: str) -> None:
        self._ensure_user(username, {"agreement_version": version})

    @mapped_errors
    def set_user_limits(self, username: str, limits: dict[str, float]) -> UserRecord:
        return user_from_document(self._ensure_user(username, {"limits": limits}))

    @mapped_errors
    def find_users(self, search: str | None = None, admin: bool | None = None, disabled: bool | None = None,
                   offset: int = 0, limit: int = 50) -> tuple[list[UserRecord], int]:
        terms: list[dict[str, Any]] = []
        if search:
            terms.append(_search(search, ("_id", "display_name", "email")))
        if admin is True:
            terms.append({"$or": [{"is_admin": True}, {"admin_granted": True}]})
        elif admin is False:
            # `$ne: True` also matches documents written before the field existed.
            terms.append({"is_admin": {"$ne": True}, "admin_granted": {"$ne": True}})
        if disabled is not None:
            terms.append({"disabled": True} if disabled else {"disabled": {"$ne": True}})
        found, total = self._page("users.page", all_of(terms), offset, limit)
        return [user_from_document(d) for d in found], total

    @mapped_errors
    def update_user(self, username: str, changes: dict[str, Any]) -> UserRecord | None:
        document = self.db.users.find_one_and_update(
            {"_id": username}, {"$set": _changes(changes, USER_CHANGES)}, return_document=ReturnDocument.AFTER
        )
        return user_from_document(document) if document else None

    @mapped_errors
    def get_key(self, key_id: str) -> KeyRecord | None:
        return _key(self._one("keys.by_id", {"_id": key_id}))

    @mapped_errors
    def find_keys(self, owner: str | None = None, model: str | None = None, status: str | None = None,
                  search: str | None = None, now: float = 0.0, offset: int = 0,
                  limit: int = 50) -> tuple[list[KeyRecord], int]:
        terms: list[dict[str, Any]] = []
        if owner is not None:
            terms.append({"owner": owner})
        if model is not None:
            terms.append({"$or": [{"models": {"$size": 0}}, {"models": model}]})
        if status is not None:
            if status not in KEY_STATUSES:
                raise StoreError(f"unknown key status {status!r}")
            terms.append({
                "active": {"active": True, "$or": [{"expires": None}, {"expires": {"$gt": now}}]},
                "expired": {"active": True, "expires": {"$ne": None, "$lte": now}},
                "revoked": {"active": False},
            }[status])
        if search:
            terms.append(_search(search, ("name", "_id", "prefix")))
        shape = "keys.page" if owner is None else "keys.page_of_owner"
        found, total = self._page(shape, all_of(terms), offset, limit)
        return [_key(d) for d in found], total

    @mapped_errors
    def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        return self._update_key(key_id, _changes(changes, KEY_CHANGES))


def _search(text: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Any of the fields `names` holds `text` as a case-insensitive, literal substring."""
    pattern = {"$regex": re.escape(text), "$options": "i"}
    return {"$or": [{name: pattern} for name in names]}


def _changes(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The `$set` of an admin's changes; ValueError (before anything is written) for a field not allowed."""
    unknown = set(changes) - set(allowed)
    if unknown or not changes:
        raise ChangeRefused(f"cannot change {', '.join(sorted(unknown)) or 'nothing'} (allowed: {', '.join(allowed)})")
    return dict(changes)


def _key(document: dict[str, Any] | None) -> KeyRecord | None:
    if document is None:
        return None
    return KeyRecord(id=document["_id"], **{name: document[name] for name in KEY_FIELDS if name in document})


def user_from_document(document: dict[str, Any]) -> UserRecord:
    return UserRecord(username=document["_id"], **{name: document[name] for name in USER_FIELDS if name in document})
