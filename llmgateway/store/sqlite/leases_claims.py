"""Job leases, budget holds and one-time claims, on SQLite."""

from __future__ import annotations

import sqlite3
import time

from ..base import HOLD_FIELDS, BudgetHold, StoreError
from .connection import SQLiteConnection

# A budget hold counts until its call's event is stored.
UNSTORED = "NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.request_id = budget_holds.request_id)"


class SQLiteLeasesAndClaims(SQLiteConnection):
    """The `LeasesAndClaims` part of the SQLite store."""

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
