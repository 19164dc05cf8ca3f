"""The embedded default store: one SQLite file in WAL mode, standard library only.

One connection per thread (the gateway's store pool, or the CLI's main thread), so calls from
the pool never share a cursor. Writes that must be atomic across processes are single upsert
statements or `BEGIN IMMEDIATE` transactions, so two gateways (or a gateway and the CLI) on the
same file never interleave them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..records import KeyRecord, UsageEvent, UserRecord
from .base import BUCKETS, GROUPS, DailyRow, RollupRow, StoreError, UsageRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    is_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_login REAL,
    agreement_version TEXT,
    limits TEXT NOT NULL DEFAULT '{}'
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
    models TEXT NOT NULL DEFAULT '[]',
    limits TEXT NOT NULL DEFAULT '{}'
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
CREATE TABLE IF NOT EXISTS usage_rollups (
    bucket TEXT NOT NULL,
    start REAL NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (bucket, start, user, key_id, model)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    namespace TEXT NOT NULL,
    item_id TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (namespace, item_id)
);
CREATE INDEX IF NOT EXISTS claims_expires ON claims(expires);
"""

# Columns added after the first release: `init` adds them to a database created before them.
ADDED_COLUMNS = (
    ("users", "limits", "TEXT NOT NULL DEFAULT '{}'"),
    ("api_keys", "limits", "TEXT NOT NULL DEFAULT '{}'"),
)

KEY_COLUMNS = "id, owner, name, hash, prefix, created, expires, active, last_used, models, limits"
USER_COLUMNS = "username, display_name, email, is_admin, created, last_login, agreement_version, limits"
USAGE_COLUMNS = (
    "ts, request_id, key_id, user, model, prompt_tokens, completion_tokens, cost, status, "
    "latency_ms, streamed, estimated, endpoint"
)
SUMS = "count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(estimated)"
DAY_EXPR = "strftime('%Y-%m-%d', ts, 'unixepoch')"
GROUP_EXPR = {"user": "user", "key": "key_id", "model": "model", "day": DAY_EXPR}
ROLLUP_COLUMNS = (
    "bucket, start, user, key_id, model, requests, prompt_tokens, completion_tokens, cost, estimated"
)


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

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"SQLite store {self.path!r}: {exc}")

    def _run(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _changes(self, sql: str, params: tuple | list = ()) -> int:
        """Run one write statement; return how many rows it changed (0 when an upsert's WHERE refused)."""
        conn = self._conn()
        before = conn.total_changes
        self._run(sql, params)
        return conn.total_changes - before

    @contextmanager
    def _transaction(self, mode: str = "") -> Iterator[sqlite3.Connection]:
        """One transaction; `mode="IMMEDIATE"` takes the write lock at once so a read-then-write cannot race."""
        conn = self._conn()
        try:
            with conn:
                conn.execute(f"BEGIN {mode}")
                yield conn
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def init(self) -> None:
        try:
            self._conn().executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        with self._transaction("IMMEDIATE") as conn:
            for table, column, ddl in ADDED_COLUMNS:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")

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
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id, record.owner, record.name, record.hash, record.prefix, record.created,
                record.expires, int(record.active), record.last_used, json.dumps(record.models),
                json.dumps(record.limits),
            ),
        )

    def _key_by_id(self, key_id: str) -> KeyRecord | None:
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
        return self._key_by_id(key_id)

    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> KeyRecord | None:
        self._run("UPDATE api_keys SET limits = ? WHERE id = ?", (json.dumps(limits), key_id))
        return self._key_by_id(key_id)

    def touch_keys(self, last_used: dict[str, float]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE api_keys SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?",
                [(ts, key_id) for key_id, ts in last_used.items()],
            )

    def insert_usage(self, events: list[UsageEvent]) -> int:
        rows = [
            (
                e.ts, e.request_id, e.key_id, e.user, e.model, e.prompt_tokens, e.completion_tokens,
                e.cost, e.status, e.latency_ms, int(e.streamed), int(e.estimated), e.endpoint,
            )
            for e in events
        ]
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO usage_events ({USAGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

    def count_usage(self) -> int:
        return self._run("SELECT count(*) FROM usage_events").fetchone()[0]

    def usage_events(self, since: float = 0.0, until: float | None = None) -> list[UsageEvent]:
        rows = self._run(
            f"SELECT {USAGE_COLUMNS} FROM usage_events WHERE ts >= ? AND ts < ? ORDER BY ts, request_id",
            (since, _until(until)),
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
        where, params = _filters("ts", since, until, user, key_id, model)
        expr = GROUP_EXPR[group_by]
        rows = self._run(
            f"SELECT {expr}, {SUMS} FROM usage_events WHERE {where} GROUP BY {expr} ORDER BY {expr}", params
        ).fetchall()
        return [
            UsageRow(group=r[0], requests=r[1], prompt_tokens=r[2], completion_tokens=r[3], cost=r[4], estimated=r[5])
            for r in rows
        ]

    def usage_by_day(
        self, since: float, until: float | None = None, user: str | None = None, key_id: str | None = None
    ) -> list[DailyRow]:
        where, params = _filters("ts", since, until, user, key_id, None)
        rows = self._run(
            f"SELECT {DAY_EXPR} AS day, model, {SUMS} FROM usage_events WHERE {where} "
            "GROUP BY day, model ORDER BY day, model",
            params,
        ).fetchall()
        return [
            DailyRow(day=r[0], model=r[1], requests=r[2], prompt_tokens=r[3], completion_tokens=r[4], cost=r[5],
                     estimated=r[6])
            for r in rows
        ]

    def delete_usage_before(self, ts: float) -> int:
        return self._changes("DELETE FROM usage_events WHERE ts < ?", (ts,))

    def rollup_usage(self, bucket: str, start: float, end: float) -> int:
        size = _bucket_size(bucket)
        # Events whose bucket start lies in [start, end) are those in [ceil(start), ceil(end)) of the bucket grid.
        lo, hi = -(-start // size) * size, -(-end // size) * size
        with self._transaction("IMMEDIATE") as conn:
            conn.execute(
                "DELETE FROM usage_rollups WHERE bucket = ? AND start >= ? AND start < ?", (bucket, start, end)
            )
            before = conn.total_changes
            conn.execute(
                f"INSERT INTO usage_rollups ({ROLLUP_COLUMNS}) "
                f"SELECT ?, CAST(ts / ? AS INTEGER) * ? AS b, user, key_id, model, {SUMS} FROM usage_events "
                "WHERE ts >= ? AND ts < ? GROUP BY b, user, key_id, model",
                (bucket, size, float(size), lo, hi),
            )
            return conn.total_changes - before

    def usage_rollups(
        self,
        bucket: str,
        since: float = 0.0,
        until: float | None = None,
        user: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
    ) -> list[RollupRow]:
        _bucket_size(bucket)
        where, params = _filters("start", since, until, user, key_id, model)
        rows = self._run(
            f"SELECT {ROLLUP_COLUMNS} FROM usage_rollups WHERE bucket = ? AND {where} "
            "ORDER BY start, user, key_id, model",
            [bucket, *params],
        ).fetchall()
        return [RollupRow(**dict(zip(ROLLUP_COLUMNS.split(", "), r, strict=True))) for r in rows]

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        return self._changes(
            "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            "WHERE leases.until <= ? OR leases.holder = excluded.holder",
            (name, holder, now + ttl, now),
        ) == 1

    def upsert_user(self, user: UserRecord) -> UserRecord:
        self._run(
            f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (username) DO UPDATE SET display_name = excluded.display_name, email = excluded.email, "
            "is_admin = excluded.is_admin, last_login = coalesce(excluded.last_login, users.last_login)",
            (
                user.username, user.display_name, user.email, int(user.is_admin), user.created or time.time(),
                user.last_login, user.agreement_version, json.dumps(user.limits),
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
        return _user(row) if row else None

    def list_users(self) -> list[UserRecord]:
        return [_user(r) for r in self._run(f"SELECT {USER_COLUMNS} FROM users ORDER BY username").fetchall()]

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

    def claim_once(self, namespace: str, item_id: str, expires: float) -> bool:
        return self._changes(
            "INSERT INTO claims (namespace, item_id, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (namespace, item_id) DO UPDATE SET expires = excluded.expires WHERE claims.expires <= ?",
            (namespace, item_id, expires, time.time()),
        ) == 1

    def is_claimed(self, namespace: str, item_id: str) -> bool:
        row = self._run(
            "SELECT 1 FROM claims WHERE namespace = ? AND item_id = ? AND expires > ?",
            (namespace, item_id, time.time()),
        ).fetchone()
        return row is not None

    def purge_claims(self, now: float) -> int:
        return self._changes("DELETE FROM claims WHERE expires <= ?", (now,))


def _until(until: float | None) -> float:
    return until if until is not None else float("inf")


def _bucket_size(bucket: str) -> int:
    if bucket not in BUCKETS:
        raise StoreError(f"unknown rollup bucket {bucket!r} (use {' or '.join(BUCKETS)})")
    return BUCKETS[bucket]


def _filters(
    column: str, since: float, until: float | None, user: str | None, key_id: str | None, model: str | None
) -> tuple[str, list]:
    """The WHERE clause for a [since, until) range on `column` plus the optional equality filters."""
    where, params = [f"{column} >= ?", f"{column} < ?"], [since, _until(until)]
    for name, value in (("user", user), ("key_id", key_id), ("model", model)):
        if value is not None:
            where.append(f"{name} = ?")
            params.append(value)
    return " AND ".join(where), params


def _key(row: tuple) -> KeyRecord:
    return KeyRecord(
        id=row[0], owner=row[1], name=row[2], hash=row[3], prefix=row[4], created=row[5],
        expires=row[6], active=bool(row[7]), last_used=row[8], models=json.loads(row[9]), limits=json.loads(row[10]),
    )


def _user(row: tuple) -> UserRecord:
    return UserRecord(
        username=row[0], display_name=row[1], email=row[2], is_admin=bool(row[3]), created=row[4],
        last_login=row[5], agreement_version=row[6], limits=json.loads(row[7]),
    )
