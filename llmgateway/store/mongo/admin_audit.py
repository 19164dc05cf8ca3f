"""The admin's model catalog, admin tokens and the audit log, on MongoDB."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from ...records import AdminToken, AuditEntry, ModelRecord
from .connection import MongoConnection, mapped_errors, time_span

TOKEN_FIELDS = tuple(f.name for f in fields(AdminToken) if f.name != "id")
AUDIT_FIELDS = tuple(f.name for f in fields(AuditEntry) if f.name != "id")


class MongoAdminAndAudit(MongoConnection):
    """The `AdminAndAudit` part of the MongoDB store."""

    @mapped_errors
    def list_models(self) -> list[ModelRecord]:
        return [_model(d) for d in self._find("models.by_id", {})]

    @mapped_errors
    def get_model(self, model_id: str) -> ModelRecord | None:
        document = self._one("models.by_id", {"_id": model_id})
        return _model(document) if document else None

    @mapped_errors
    def insert_model(self, record: ModelRecord) -> bool:
        try:
            self.db.models.insert_one(
                {"_id": record.id, "settings": record.settings, "created": record.created, "updated": record.updated}
            )
        except DuplicateKeyError:
            return False
        return True

    @mapped_errors
    def update_model(self, record: ModelRecord) -> bool:
        result = self.db.models.update_one(
            {"_id": record.id}, {"$set": {"settings": record.settings, "updated": record.updated}}
        )
        return result.matched_count == 1

    @mapped_errors
    def delete_model(self, model_id: str) -> bool:
        return self.db.models.delete_one({"_id": model_id}).deleted_count == 1

    @mapped_errors
    def insert_admin_token(self, token: AdminToken) -> None:
        self.db.admin_tokens.insert_one({"_id": token.id, **{name: getattr(token, name) for name in TOKEN_FIELDS}})

    @mapped_errors
    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        return _token(self._one("tokens.by_hash", {"hash": token_hash}))

    @mapped_errors
    def list_admin_tokens(self) -> list[AdminToken]:
        return [_token(d) for d in self._find("tokens.newest", {})]

    @mapped_errors
    def revoke_admin_token(self, token_id: str) -> AdminToken | None:
        return _token(self.db.admin_tokens.find_one_and_update(
            {"_id": token_id}, {"$set": {"active": False}}, return_document=ReturnDocument.AFTER
        ))

    @mapped_errors
    def touch_admin_token(self, token_id: str, ts: float) -> None:
        # As touch_keys: a conditional $set rather than $max, which mongomock cannot apply over null.
        self.db.admin_tokens.update_one(
            {"_id": token_id, "$or": [{"last_used": None}, {"last_used": {"$lt": ts}}]}, {"$set": {"last_used": ts}}
        )

    @mapped_errors
    def insert_audit(self, entry: AuditEntry) -> AuditEntry:
        # An ObjectId increases with time (seconds first, then a per-process counter), so newest
        # first is ts then _id descending.
        entry_id = ObjectId()
        self.db.audit_log.insert_one({"_id": entry_id, **{name: getattr(entry, name) for name in AUDIT_FIELDS}})
        return replace(entry, id=str(entry_id))

    @mapped_errors
    def find_audit(self, actor: str | None = None, action: str | None = None, target: str | None = None,
                   via: str | None = None, since: float = 0.0, until: float | None = None, offset: int = 0,
                   limit: int = 50) -> tuple[list[AuditEntry], int]:
        query = time_span("ts", since, until)
        for name, value in (("actor", actor), ("target", target), ("via", via)):
            if value is not None:
                query[name] = value
        if action:
            query["action"] = {"$regex": "^" + re.escape(action)}
        shape = "audit.of_actor" if actor is not None else "audit.of_target" if target is not None else "audit.page"
        found, total = self._page(shape, query, offset, limit)
        return [_audit(d) for d in found], total


def _model(document: dict[str, Any]) -> ModelRecord:
    return ModelRecord(id=document["_id"], settings=document["settings"], created=document["created"],
                       updated=document["updated"])


def _token(document: dict[str, Any] | None) -> AdminToken | None:
    if document is None:
        return None
    # Tokens stored before they had an owner have neither `owner` nor `parent`: with no owner,
    # such a token acts for nobody and is refused.
    return AdminToken(id=document["_id"], **{name: document.get(name, "") if name in ("owner", "parent")
                                             else document[name] for name in TOKEN_FIELDS})


def _audit(document: dict[str, Any]) -> AuditEntry:
    return AuditEntry(id=str(document["_id"]), **{name: document[name] for name in AUDIT_FIELDS})
