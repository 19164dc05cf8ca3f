"""The embedded default store: one SQLite file in WAL mode, standard library only.

One connection per thread (the gateway's store pool, or the CLI's main thread), so calls from
the pool never share a cursor. Writes that must be atomic across processes are single upsert
statements or `BEGIN IMMEDIATE` transactions, so two gateways (or a gateway and the CLI) on the
same file never interleave them.
"""

from __future__ import annotations

import sqlite3

from .admin_audit import SQLiteAdminAndAudit
from .keys_people import SQLiteKeysAndPeople
from .leases_claims import SQLiteLeasesAndClaims
from .schema import ADDED_COLUMNS, SCHEMA
from .usage import SQLiteUsage, rebuild_daily_models, rebuild_daily_users


class SQLiteStore(SQLiteKeysAndPeople, SQLiteUsage, SQLiteAdminAndAudit, SQLiteLeasesAndClaims):
    """SQLite backend of the `Store` contract: its parts, and the lifecycle of the whole."""

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
                rebuild_daily_users(conn, float("-inf"), float("inf"))
            # A store written before the per-model daily rollups existed: derive them from the per-user ones.
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM usage_daily_models)").fetchone()[0]:
                rebuild_daily_models(conn, float("-inf"), float("inf"))

    def ping(self) -> None:
        self._run("SELECT 1 FROM api_keys LIMIT 1").fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
