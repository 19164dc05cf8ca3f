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
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..records import AdminToken, AuditEntry, KeyRecord, ModelRecord, UsageEvent, UserRecord
from .base import (
    BUCKETS,
    GROUPS,
    HOLD_FIELDS,
    KEY_CHANGES,
    KEY_STATUSES,
    REPORT_ORDERS,
    USER_CHANGES,
    BudgetHold,
    DailyRow,
    RollupRow,
    StoreError,
    UsageRow,
    UsageTotals,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    is_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_login REAL,
    agreement_version TEXT,
    limits TEXT NOT NULL DEFAULT '{}',
    admin_granted INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0
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
-- The admin's key list pages newest first. The index carries every column its filters read but
-- the owner (which has its own index), so a filter, a count or a deep page never reads the table.
CREATE INDEX IF NOT EXISTS api_keys_newest ON api_keys(created DESC, id, active, expires, name, prefix, models);
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
-- Usage reports with a key read the daily rows through covering indexes (`bucket` is among the
-- columns, or SQLite would read the table to check it): by range of days, and by key.
CREATE INDEX IF NOT EXISTS usage_rollups_day ON usage_rollups(
    bucket, start, key_id, user, model, requests, prompt_tokens, completion_tokens, cost, estimated
) WHERE bucket = 'day';
CREATE INDEX IF NOT EXISTS usage_rollups_day_key ON usage_rollups(
    bucket, key_id, start, user, model, requests, prompt_tokens, completion_tokens, cost, estimated
) WHERE bucket = 'day';
-- Daily sums per person and model (no key), rebuilt with the "day" rollups: the rows usage reports
-- without a key read. Clustered on the primary key (WITHOUT ROWID), so a range of days is one
-- covering range scan.
CREATE TABLE IF NOT EXISTS usage_daily_users (
    start REAL NOT NULL,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (start, user, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_daily_users_user ON usage_daily_users(
    user, start, requests, prompt_tokens, completion_tokens, cost, estimated
);
CREATE INDEX IF NOT EXISTS usage_daily_users_model ON usage_daily_users(
    model, start, requests, prompt_tokens, completion_tokens, cost, estimated
);
-- Daily sums per model (no person, no key), rebuilt with the per-user daily rows: the few rows
-- usage reports by day or by model read when no person or key is asked for.
CREATE TABLE IF NOT EXISTS usage_daily_models (
    start REAL NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (start, model)
) WITHOUT ROWID;
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
CREATE TABLE IF NOT EXISTS budget_holds (
    request_id TEXT NOT NULL,
    counter TEXT NOT NULL,
    amount INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (request_id, counter)
);
CREATE INDEX IF NOT EXISTS budget_holds_counter ON budget_holds(counter, expires);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    active INTEGER NOT NULL DEFAULT 1,
    last_used REAL,
    owner TEXT NOT NULL DEFAULT '',
    parent TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log(ts);
CREATE INDEX IF NOT EXISTS audit_log_actor_ts ON audit_log(actor, ts);
CREATE INDEX IF NOT EXISTS audit_log_target_ts ON audit_log(target, ts);
CREATE INDEX IF NOT EXISTS audit_log_action_ts ON audit_log(action, ts);
"""

# Columns added after the first release: `init` adds them to a database created before them.
ADDED_COLUMNS = (
    ("users", "limits", "TEXT NOT NULL DEFAULT '{}'"),
    ("api_keys", "limits", "TEXT NOT NULL DEFAULT '{}'"),
    ("users", "admin_granted", "INTEGER NOT NULL DEFAULT 0"),
    ("users", "disabled", "INTEGER NOT NULL DEFAULT 0"),
    ("admin_tokens", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("admin_tokens", "parent", "TEXT NOT NULL DEFAULT ''"),
)

KEY_COLUMNS = "id, owner, name, hash, prefix, created, expires, active, last_used, models, limits"
USER_COLUMNS = (
    "username, display_name, email, is_admin, created, last_login, agreement_version, limits, admin_granted, disabled"
)
USAGE_COLUMNS = (
    "ts, request_id, key_id, user, model, prompt_tokens, completion_tokens, cost, status, "
    "latency_ms, streamed, estimated, endpoint"
)
# A budget hold counts until its call's event is stored.
UNSTORED = "NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.request_id = budget_holds.request_id)"
SUMS = "count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(estimated)"
DAY_EXPR = "strftime('%Y-%m-%d', ts, 'unixepoch')"
GROUP_EXPR = {"user": "user", "key": "key_id", "model": "model", "day": DAY_EXPR}
ROLLUP_COLUMNS = (
    "bucket, start, user, key_id, model, requests, prompt_tokens, completion_tokens, cost, estimated"
)
SUM_COLUMNS = "requests, prompt_tokens, completion_tokens, cost, estimated"
TOKEN_COLUMNS = "id, name, hash, prefix, created_by, created, expires, active, last_used, owner, parent"
AUDIT_COLUMNS = "id, ts, actor, via, source, action, target, details"
# Usage reports group rollup rows (`start` is a UTC midnight) and raw events (`ts`) alike; days
# group by their midnight and are named YYYY-MM-DD only once grouped.
ROLLUP_GROUP = {"user": "user", "key": "key_id", "model": "model", "day": "start"}
EVENT_GROUP = {"user": "user", "key": "key_id", "model": "model", "day": "CAST(ts / 86400 AS INTEGER) * 86400.0"}
REPORT_ORDER = {
    "group": "g",
    "cost": "cost DESC, g",
    "requests": "requests DESC, g",
    "tokens": "prompt_tokens + completion_tokens DESC, g",
}
GROUP_SUMS = (
    "sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens, "
    "sum(completion_tokens) AS completion_tokens, sum(cost) AS cost, sum(estimated) AS estimated"
)
TOTALS = (
    "count(*), coalesce(sum(requests), 0), coalesce(sum(prompt_tokens), 0), "
    "coalesce(sum(completion_tokens), 0), total(cost), coalesce(sum(estimated), 0)"
)
# The same over the groups of a page's query (never empty when a page has rows).
WINDOW_TOTALS = ", ".join(
    f"{part} OVER ()" for part in
    ("count(*)", "sum(requests)", "sum(prompt_tokens)", "sum(completion_tokens)", "total(cost)", "sum(estimated)")
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
            # A store written before the per-user daily rollups existed: derive them from the per-key ones.
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM usage_daily_users)").fetchone()[0]:
                _rebuild_daily_users(conn, float("-inf"), float("inf"))
            # A store written before the per-model daily rollups existed: derive them from the per-user ones.
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM usage_daily_models)").fetchone()[0]:
                _rebuild_daily_models(conn, float("-inf"), float("inf"))

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

    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> KeyRecord | None:
        self._run("UPDATE api_keys SET limits = ? WHERE id = ?", (json.dumps(limits), key_id))
        return self.get_key(key_id)

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
        return [_event(r) for r in rows]

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
            written = conn.total_changes - before
            if bucket == "day":
                _rebuild_daily_users(conn, start, end)
                _rebuild_daily_models(conn, start, end)
            return written

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

    def reserve_budgets(self, request_id: str, holds: list[BudgetHold], now: float,
                        expires: float) -> tuple[int, list[int]]:
        with self._transaction("IMMEDIATE") as conn:
            used = [_budget_used(conn, hold, now) for hold in holds]
            for i, hold in enumerate(holds):
                if used[i] + hold.amount > hold.limit:
                    return i, used
            conn.executemany(
                "INSERT OR REPLACE INTO budget_holds (request_id, counter, amount, expires) VALUES (?, ?, ?, ?)",
                [(request_id, hold.counter, hold.amount, expires) for hold in holds],
            )
            return -1, used

    def release_budgets(self, request_id: str) -> None:
        self._run("DELETE FROM budget_holds WHERE request_id = ?", (request_id,))

    def held_budgets(self, now: float) -> dict[str, int]:
        rows = self._run(
            f"SELECT counter, sum(amount) FROM budget_holds WHERE expires > ? AND {UNSTORED} GROUP BY counter",
            (now,),
        ).fetchall()
        return dict(rows)

    def purge_holds(self, now: float) -> int:
        return self._changes(f"DELETE FROM budget_holds WHERE expires <= ? OR NOT {UNSTORED}", (now,))

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

    def _find(self, columns: str, table: str, where: list[str], params: list, order: str, offset: int,
              limit: int | None) -> tuple[list[tuple], int]:
        """One page of rows and the count of all matching rows, read in one snapshot so they agree."""
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT {columns} FROM {table} {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, _limit(limit), max(offset, 0)],
            ).fetchall()
            total = conn.execute(f"SELECT count(*) FROM {table} {clause}", params).fetchone()[0]
        return rows, total

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
        return [_user(r) for r in rows], total

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
        where, params = ["ts >= ?", "ts < ?"], [since, _until(until)]
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

    def usage_report(self, group_by: str, since: float, live_since: float, until: float | None = None,
                     user: str | None = None, key_id: str | None = None, model: str | None = None,
                     order: str = "group", offset: int = 0,
                     limit: int | None = None) -> tuple[list[UsageRow], int, UsageTotals]:
        """Group, order, page, count and sum in one statement, so rows never come to Python.

        The rollup part and the raw part are grouped apart before their union is grouped: the
        last GROUP BY then sorts groups, not rows. The window sums run over every group before
        LIMIT cuts the page.
        """
        if group_by not in GROUPS:
            raise StoreError(f"cannot group usage by {group_by!r}")
        if order not in REPORT_ORDERS:
            raise StoreError(f"cannot order usage by {order!r}")
        end = _until(until)
        split = min(max(live_since, since), end)  # rollups in [since, split), raw events in [split, end)
        # A key in group or filter needs the per-key rows; without one, the smaller per-user rows do;
        # by day or model without a person either, the per-model rows (a few per day) do.
        if group_by == "key" or key_id is not None:
            table, bucket = "usage_rollups", "bucket = 'day' AND "
        elif group_by in ("day", "model") and user is None:
            table, bucket = "usage_daily_models", ""
        else:
            table, bucket = "usage_daily_users", ""
        live, live_params = _filters("ts", split, end, user, key_id, model)
        with self._transaction() as conn:
            # Over most of the stored days, reading the rollups in group order (through the index led
            # by the group column; `+start` keeps SQLite off the range scan) spares the sort that a
            # range scan needs before grouping. Over fewer days, the range scan reads far less.
            column = "start"
            if group_by != "day" and table != "usage_daily_models":
                first_day = conn.execute(f"SELECT min(start) FROM {table} WHERE {bucket}1").fetchone()[0]
                if first_day is not None and 2 * (split - since) >= split - first_day:
                    column = "+start"
            rolled, rolled_params = _filters(column, since, split, user, key_id, model)
            grouped = (
                f"SELECT g, {GROUP_SUMS} FROM ("
                f"SELECT {ROLLUP_GROUP[group_by]} AS g, {GROUP_SUMS} FROM {table} WHERE {bucket}{rolled} GROUP BY g "
                f"UNION ALL SELECT {EVENT_GROUP[group_by]} AS g, count(*), sum(prompt_tokens), sum(completion_tokens), "
                f"sum(cost), sum(estimated) FROM usage_events WHERE {live} GROUP BY g) GROUP BY g"
            )
            params = [*rolled_params, *live_params]
            rows = conn.execute(
                f"WITH grouped AS ({grouped}) SELECT g, {SUM_COLUMNS}, {WINDOW_TOTALS} FROM grouped "
                f"ORDER BY {REPORT_ORDER[order]} LIMIT ? OFFSET ?",
                [*params, _limit(limit), max(offset, 0)],
            ).fetchall()
            summary = rows[0][6:] if rows else conn.execute(f"SELECT {TOTALS} FROM ({grouped})", params).fetchone()
        day = group_by == "day"
        page = [
            UsageRow(group=_day(r[0]) if day else r[0], requests=r[1], prompt_tokens=r[2], completion_tokens=r[3],
                     cost=r[4], estimated=r[5])
            for r in rows
        ]
        totals = UsageTotals(requests=summary[1], prompt_tokens=summary[2], completion_tokens=summary[3],
                             cost=summary[4], estimated=summary[5])
        return page, summary[0], totals

    def find_usage(self, user: str | None = None, key_id: str | None = None, since: float = 0.0,
                   until: float | None = None, offset: int = 0, limit: int = 50) -> tuple[list[UsageEvent], int]:
        where, params = _filters("ts", since, until, user, key_id, None)
        rows, total = self._find(USAGE_COLUMNS, "usage_events", [where], params, "ts DESC, request_id", offset, limit)
        return [_event(r) for r in rows], total


def _until(until: float | None) -> float:
    return until if until is not None else float("inf")


def _rebuild_daily_users(conn: sqlite3.Connection, start: float, end: float) -> None:
    """The per-user daily rows starting in [start, end), from the per-key day rows (fewer to read
    than the raw events)."""
    _resum(conn, "usage_daily_users", "user, model", "usage_rollups", "bucket = 'day' AND", start, end)


def _rebuild_daily_models(conn: sqlite3.Connection, start: float, end: float) -> None:
    """The per-model daily rows starting in [start, end), from the per-user daily rows (rebuild those first)."""
    _resum(conn, "usage_daily_models", "model", "usage_daily_users", "", start, end)


def _resum(conn: sqlite3.Connection, table: str, columns: str, source: str, source_filter: str, start: float,
           end: float) -> None:
    """Replace `table`'s rows starting in [start, end) with `source`'s sums per start and `columns`."""
    conn.execute(f"DELETE FROM {table} WHERE start >= ? AND start < ?", (start, end))
    conn.execute(
        f"INSERT INTO {table} (start, {columns}, {SUM_COLUMNS}) SELECT start, {columns}, {GROUP_SUMS} FROM {source} "
        f"WHERE {source_filter} start >= ? AND start < ? GROUP BY start, {columns}",
        (start, end),
    )


def _limit(limit: int | None) -> int:
    """SQLite's LIMIT for a page size: -1 (no limit) for None, never a negative one by mistake."""
    return -1 if limit is None else max(limit, 0)


def _like(text: str) -> str:
    r"""A LIKE pattern (with ESCAPE '\') matching `text` as a literal substring."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _glob_prefix(text: str) -> str:
    """A GLOB pattern matching strings that start with `text` literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text) + "*"


def _changes(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """Column values for an admin's changes; ValueError (before anything is written) for a field not allowed."""
    unknown = set(changes) - set(allowed)
    if unknown or not changes:
        raise ValueError(f"cannot change {', '.join(sorted(unknown)) or 'nothing'} (allowed: {', '.join(allowed)})")
    return {
        name: json.dumps(value) if name in ("limits", "models") else int(value) if isinstance(value, bool) else value
        for name, value in changes.items()
    }


def _day(start: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(start))


def _bucket_size(bucket: str) -> int:
    if bucket not in BUCKETS:
        raise StoreError(f"unknown rollup bucket {bucket!r} (use {' or '.join(BUCKETS)})")
    return BUCKETS[bucket]


def _budget_used(conn: sqlite3.Connection, hold: BudgetHold, now: float) -> int:
    """A budget's use as the store sees it: its stored events plus its live holds (see `BudgetHold`)."""
    if hold.field not in HOLD_FIELDS:
        raise StoreError(f"cannot hold a budget on {hold.field!r}")
    stored = 0.0
    if not hold.tokens:
        stored = conn.execute(f"SELECT total(cost) FROM usage_events WHERE {hold.field} = ? AND ts >= ?",
                              (hold.who, hold.since)).fetchone()[0]
    elif hold.models:
        marks = ", ".join("?" * len(hold.models))
        stored = conn.execute(
            f"SELECT total(prompt_tokens + completion_tokens) FROM usage_events "
            f"WHERE {hold.field} = ? AND ts >= ? AND model IN ({marks})",
            (hold.who, hold.since, *hold.models),
        ).fetchone()[0]
    held = conn.execute(
        f"SELECT coalesce(sum(amount), 0) FROM budget_holds WHERE counter = ? AND expires > ? AND {UNSTORED}",
        (hold.counter, now),
    ).fetchone()[0]
    return round(stored * hold.scale) + held


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
        last_login=row[5], agreement_version=row[6], limits=json.loads(row[7]), admin_granted=bool(row[8]),
        disabled=bool(row[9]),
    )


def _event(row: tuple) -> UsageEvent:
    return UsageEvent(*row[:10], streamed=bool(row[10]), estimated=bool(row[11]), endpoint=row[12])


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
