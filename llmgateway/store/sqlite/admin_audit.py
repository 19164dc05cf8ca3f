"""The admin's model catalog, admin tokens and the audit log, on SQLite."""

from __future__ import annotations

import json
from dataclasses import replace

from ...records import AdminToken, AuditEntry, ModelRecord
from .connection import SQLiteConnection, upper_bound

TOKEN_COLUMNS = "id, name, hash, prefix, created_by, created, expires, active, last_used, owner, parent"
AUDIT_COLUMNS = "id, ts, actor, via, source, action, target, details"


class SQLiteAdminAndAudit(SQLiteConnection):
    """The `AdminAndAudit` part of the SQLite store."""

    def list_models(self) -> list[ModelRecord]:
        rows = self._run("SELECT id, settings, created, updated FROM models ORDER BY id").fetchall()
        return [_model(r) for r in rows]

    def get_model(self, model_id: str) -> ModelRecord | None:
        row = self._run("SELECT id, settings, created, updated FROM models WHERE id = ?", (model_id,)).fetchone()
        return _model(row) if row else None

    def insert_model(self, record: ModelRecord) -> bool:
        return self._changes(
            "INSERT INTO models (id, settings, created, updated) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (record.id, json.dumps(record.settings), record.created, record.updated),
        ) == 1

    def update_model(self, record: ModelRecord) -> bool:
        return self._changes(
            "UPDATE models SET settings = ?, updated = ? WHERE id = ?",
            (json.dumps(record.settings), record.updated, record.id),
        ) == 1

    def delete_model(self, model_id: str) -> bool:
        return self._changes("DELETE FROM models WHERE id = ?", (model_id,)) == 1

    def insert_admin_token(self, token: AdminToken) -> None:
        self._run(
            f"INSERT INTO admin_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.id, token.name, token.hash, token.prefix, token.created_by, token.created, token.expires,
                int(token.active), token.last_used, token.owner, token.parent,
            ),
        )

    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        row = self._run(f"SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE hash = ?", (token_hash,)).fetchone()
        return _token(row) if row else None

    def list_admin_tokens(self) -> list[AdminToken]:
        rows = self._run(f"SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY created DESC, id").fetchall()
        return [_token(r) for r in rows]

    def revoke_admin_token(self, token_id: str) -> AdminToken | None:
        if not self._changes("UPDATE admin_tokens SET active = 0 WHERE id = ?", (token_id,)):
            return None
        row = self._run(f"SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE id = ?", (token_id,)).fetchone()
        return _token(row) if row else None

    def touch_admin_token(self, token_id: str, ts: float) -> None:
        self._run("UPDATE admin_tokens SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?", (ts, token_id))

    def insert_audit(self, entry: AuditEntry) -> AuditEntry:
        cursor = self._run(
            "INSERT INTO audit_log (ts, actor, via, source, action, target, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.ts, entry.actor, entry.via, entry.source, entry.action, entry.target, json.dumps(entry.details)),
        )
        return replace(entry, id=str(cursor.lastrowid))

    def find_audit(self, actor: str | None = None, action: str | None = None, target: str | None = None,
                   via: str | None = None, since: float = 0.0, until: float | None = None, offset: int = 0,
                   limit: int = 50) -> tuple[list[AuditEntry], int]:
        where, params = ["ts >= ?", "ts < ?"], [since, upper_bound(until)]
        for column, value in (("actor", actor), ("target", target), ("via", via)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if action:
            # GLOB is case-sensitive and, with a literal prefix, reads the (action, ts) index.
            where.append("action GLOB ?")
            params.append(_glob_prefix(action))
        rows, total = self._find(AUDIT_COLUMNS, "audit_log", where, params, "ts DESC, id DESC", offset, limit)
        return [_audit(r) for r in rows], total


def _glob_prefix(text: str) -> str:
    """A GLOB pattern matching strings that start with `text` literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text) + "*"


def _model(row: tuple) -> ModelRecord:
    return ModelRecord(id=row[0], settings=json.loads(row[1]), created=row[2], updated=row[3])


def _token(row: tuple) -> AdminToken:
    return AdminToken(
        id=row[0], name=row[1], hash=row[2], prefix=row[3], created_by=row[4], created=row[5], expires=row[6],
        active=bool(row[7]), last_used=row[8], owner=row[9], parent=row[10],
    )


def _audit(row: tuple) -> AuditEntry:
    return AuditEntry(
        id=str(row[0]), ts=row[1], actor=row[2], via=row[3], source=row[4], action=row[5], target=row[6],
        details=json.loads(row[7]),
    )
