"""The embedded default store: one SQLite file in WAL mode, standard library only.

One connection per thread (the gateway's store pool, or the CLI's main thread), so calls from
the pool never share a cursor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from ..records import KeyRecord, UsageEvent
from .base import GROUPS, StoreError, UsageRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    is_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_login REAL,
    agreement_version TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(username),
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    expires REAL,
    last_used REAL,
    models TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys(owner);
CREATE TABLE IF NOT EXISTS usage_events (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    key_id TEXT NOT NULL,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL DEFAULT '',
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    streamed INTEGER NOT NULL,
    estimated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_events_ts ON usage_events(ts);
CREATE INDEX IF NOT EXISTS usage_events_user_ts ON usage_events(user, ts);
CREATE INDEX IF NOT EXISTS usage_events_key_ts ON usage_events(key_id, ts);
CREATE INDEX IF NOT EXISTS usage_events_model_ts ON usage_events(model, ts);
"""

KEY_COLUMNS = "id, owner, name, hash, prefix, created, expires, active, last_used, models"
USAGE_COLUMNS = (
    "ts, request_id, key_id, user, model, prompt_tokens, completion_tokens, cost, status, "
    "latency_ms, streamed, estimated, endpoint"
)
GROUP_EXPR = {
    "user": "user",
    "key": "key_id",
    "model": "model",
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
}


class SQLiteStore:
    """SQLite backend of the `Store` contract."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from None
            self._local.conn = conn
        return conn

    def _run(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: {exc}") from None

    def init(self) -> None:
        try:
            self._conn().executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: {exc}") from None

    def ping(self) -> None:
        self._run("SELECT 1 FROM api_keys LIMIT 1").fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def insert_key(self, record: KeyRecord) -> None:
        self._run(
            "INSERT OR IGNORE INTO users (username, created) VALUES (?, ?)", (record.owner, time.time())
        )
        self._run(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id, record.owner, record.name, record.hash, record.prefix, record.created,
                record.expires, int(record.active), record.last_used, json.dumps(record.models),
            ),
        )

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
        row = self._run(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def touch_keys(self, last_used: dict[str, float]) -> None:
        conn = self._conn()
        try:
            with conn:
                conn.execute("BEGIN")
                conn.executemany(
                    "UPDATE api_keys SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?",
                    [(ts, key_id) for key_id, ts in last_used.items()],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: {exc}") from None

    def insert_usage(self, events: list[UsageEvent]) -> int:
        conn = self._conn()
        rows = [
            (
                e.ts, e.request_id, e.key_id, e.user, e.model, e.prompt_tokens, e.completion_tokens,
                e.cost, e.status, e.latency_ms, int(e.streamed), int(e.estimated), e.endpoint,
            )
            for e in events
        ]
        try:
            with conn:
                conn.execute("BEGIN")
                before = conn.total_changes
                conn.executemany(
                    f"INSERT OR IGNORE INTO usage_events ({USAGE_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                return conn.total_changes - before
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: {exc}") from None

    def count_usage(self) -> int:
        return self._run("SELECT count(*) FROM usage_events").fetchone()[0]

    def usage_events(self, since: float = 0.0, until: float | None = None) -> list[UsageEvent]:
        rows = self._run(
            f"SELECT {USAGE_COLUMNS} FROM usage_events WHERE ts >= ? AND ts < ? ORDER BY ts, request_id",
            (since, until if until is not None else float("inf")),
        ).fetchall()
        return [
            UsageEvent(*r[:10], streamed=bool(r[10]), estimated=bool(r[11]), endpoint=r[12]) for r in rows
        ]

    def usage_summary(
        self,
        group_by: str,
        since: float = 0.0,
        until: float | None = None,
        user: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
        if group_by not in GROUPS:
            raise StoreError(f"cannot group usage by {group_by!r}")
        where, params = ["ts >= ?", "ts < ?"], [since, until if until is not None else float("inf")]
        for column, value in (("user", user), ("key_id", key_id), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        expr = GROUP_EXPR[group_by]
        rows = self._run(
            f"SELECT {expr}, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(estimated) "
            f"FROM usage_events WHERE {' AND '.join(where)} GROUP BY {expr} ORDER BY {expr}",
            params,
        ).fetchall()
        return [
            UsageRow(group=r[0], requests=r[1], prompt_tokens=r[2], completion_tokens=r[3], cost=r[4], estimated=r[5])
            for r in rows
        ]


def _key(row: tuple) -> KeyRecord:
    return KeyRecord(
        id=row[0], owner=row[1], name=row[2], hash=row[3], prefix=row[4], created=row[5],
        expires=row[6], active=bool(row[7]), last_used=row[8], models=json.loads(row[9]),
    )
