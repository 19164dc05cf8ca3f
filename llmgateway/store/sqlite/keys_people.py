"""API keys and the people who own them, on SQLite."""

from __future__ import annotations

import json
import time
from typing import Any

from ...records import KeyRecord, UserRecord
from ..base import KEY_CHANGES, KEY_STATUSES, USER_CHANGES, StoreError
from .connection import SQLiteConnection

KEY_COLUMNS = "id, owner, name, hash, prefix, created, expires, active, last_used, models, limits"
USER_COLUMNS = (
    "username, display_name, email, is_admin, created, last_login, agreement_version, limits, admin_granted, disabled"
)


class SQLiteKeysAndPeople(SQLiteConnection):
    """The `KeysAndPeople` part of the SQLite store."""

    def insert_key(self, record: KeyRecord) -> None:
        self._run(
            "INSERT OR IGNORE INTO users (username, created) VALUES (?, ?)", (record.owner, time.time())
        )
        self._run(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id, record.owner, record.name, record.hash, record.prefix, record.created,
                record.expires, int(record.active), record.last_used, json.dumps(record.models),
                json.dumps(record.limits),
            ),
        )

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._run(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = self._run(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
        return _key(row) if row else None

    def list_keys(self, owner: str | None = None, active_only: bool = False) -> list[KeyRecord]:
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if active_only:
            where.append("active = 1")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._run(f"SELECT {KEY_COLUMNS} FROM api_keys {clause} ORDER BY created, id", params)
        return [_key(r) for r in rows.fetchall()]

    def revoke_key(self, key_id: str) -> KeyRecord | None:
        self._run("UPDATE api_keys SET active = 0 WHERE id = ?", (key_id,))
        return self.get_key(key_id)

    def touch_keys(self, last_used: dict[str, float]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE api_keys SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?",
                [(ts, key_id) for key_id, ts in last_used.items()],
            )

    def upsert_user(self, user: UserRecord) -> UserRecord:
        self._run(
            f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (username) DO UPDATE SET display_name = excluded.display_name, email = excluded.email, "
            "is_admin = excluded.is_admin, last_login = coalesce(excluded.last_login, users.last_login)",
            (
                user.username, user.display_name, user.email, int(user.is_admin), user.created or time.time(),
                user.last_login, user.agreement_version, json.dumps(user.limits), int(user.admin_granted),
                int(user.disabled),
            ),
        )
        return self._stored_user(user.username)

    def _stored_user(self, username: str) -> UserRecord:
        found = self.get_user(username)
        if found is None:
            raise StoreError(f"SQLite store {self.path!r}: user {username!r} vanished while being written")
        return found

    def get_user(self, username: str) -> UserRecord | None:
        row = self._run(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
        return user_from_row(row) if row else None

    def _set_user_field(self, username: str, column: str, value: str) -> None:
        """Set one column of a user, creating the user if missing."""
        self._run(
            f"INSERT INTO users (username, created, {column}) VALUES (?, ?, ?) "
            f"ON CONFLICT (username) DO UPDATE SET {column} = excluded.{column}",
            (username, time.time(), value),
        )

    def set_agreement(self, username: str, version: str) -> None:
        self._set_user_field(username, "agreement_version", version)

    def set_user_limits(self, username: str, limits: dict[str, float]) -> UserRecord:
        self._set_user_field(username, "limits", json.dumps(limits))
        return self._stored_user(username)

    def find_users(self, search: str | None = None, admin: bool | None = None, disabled: bool | None = None,
                   offset: int = 0, limit: int = 50) -> tuple[list[UserRecord], int]:
        where, params = [], []
        if search:
            where.append(r"(username LIKE ? ESCAPE '\' OR display_name LIKE ? ESCAPE '\' OR email LIKE ? ESCAPE '\')")
            params += [_like(search)] * 3
        if admin is not None:
            where.append("(is_admin OR admin_granted) = ?")
            params.append(int(admin))
        if disabled is not None:
            where.append("disabled = ?")
            params.append(int(disabled))
        rows, total = self._find(USER_COLUMNS, "users", where, params, "username", offset, limit)
        return [user_from_row(r) for r in rows], total

    def update_user(self, username: str, changes: dict[str, Any]) -> UserRecord | None:
        values = _changes(changes, USER_CHANGES)
        sets = ", ".join(f"{name} = ?" for name in values)
        if not self._changes(f"UPDATE users SET {sets} WHERE username = ?", [*values.values(), username]):
            return None
        return self.get_user(username)

    def find_keys(self, owner: str | None = None, model: str | None = None, status: str | None = None,
                  search: str | None = None, now: float = 0.0, offset: int = 0,
                  limit: int = 50) -> tuple[list[KeyRecord], int]:
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if model is not None:
            where.append("(models = '[]' OR EXISTS (SELECT 1 FROM json_each(models) WHERE value = ?))")
            params.append(model)
        if status is not None:
            if status not in KEY_STATUSES:
                raise StoreError(f"unknown key status {status!r}")
            where.append({
                "active": "active = 1 AND (expires IS NULL OR expires > ?)",
                "expired": "active = 1 AND expires <= ?",
                "revoked": "active = 0",
            }[status])
            if status != "revoked":
                params.append(now)
        if search:
            where.append(r"(name LIKE ? ESCAPE '\' OR id LIKE ? ESCAPE '\' OR prefix LIKE ? ESCAPE '\')")
            params += [_like(search)] * 3
        rows, total = self._find(KEY_COLUMNS, "api_keys", where, params, "created DESC, id", offset, limit)
        return [_key(r) for r in rows], total

    def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        values = _changes(changes, KEY_CHANGES)
        sets = ", ".join(f"{name} = ?" for name in values)
        if not self._changes(f"UPDATE api_keys SET {sets} WHERE id = ?", [*values.values(), key_id]):
            return None
        return self.get_key(key_id)


def _like(text: str) -> str:
    r"""A LIKE pattern (with ESCAPE '\') matching `text` as a literal substring."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _changes(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """Column values for an admin's changes; ValueError (before anything is written) for a field not allowed."""
    unknown = set(changes) - set(allowed)
    if unknown or not changes:
        raise ValueError(f"cannot change {', '.join(sorted(unknown)) or 'nothing'} (allowed: {', '.join(allowed)})")
    return {
        name: json.dumps(value) if name in ("limits", "models") else int(value) if isinstance(value, bool) else value
        for name, value in changes.items()
    }


def _key(row: tuple) -> KeyRecord:
    return KeyRecord(
        id=row[0], owner=row[1], name=row[2], hash=row[3], prefix=row[4], created=row[5],
        expires=row[6], active=bool(row[7]), last_used=row[8], models=json.loads(row[9]), limits=json.loads(row[10]),
    )


def user_from_row(row: tuple) -> UserRecord:
    return UserRecord(
        username=row[0], display_name=row[1], email=row[2], is_admin=bool(row[3]), created=row[4],
        last_login=row[5], agreement_version=row[6], limits=json.loads(row[7]), admin_granted=bool(row[8]),
        disabled=bool(row[9]),
    )
