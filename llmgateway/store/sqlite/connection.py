"""One SQLite connection per thread, and the statement, transaction and paging helpers every part of the store uses."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base import StoreError


class SQLiteConnection:
    """The store's file and this thread's connection to it."""

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

    def _find(self, columns: str, table: str, where: list[str], params: list, order: str, offset: int,
              limit: int | None) -> tuple[list[tuple], int]:
        """One page of rows and the count of all matching rows, read in one snapshot so they agree."""
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT {columns} FROM {table} {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, sql_limit(limit), max(offset, 0)],
            ).fetchall()
            total = conn.execute(f"SELECT count(*) FROM {table} {clause}", params).fetchone()[0]
        return rows, total


def upper_bound(until: float | None) -> float:
    return until if until is not None else float("inf")


def sql_limit(limit: int | None) -> int:
    """SQLite's LIMIT for a page size: -1 (no limit) for None, never a negative one by mistake."""
    return -1 if limit is None else max(limit, 0)
