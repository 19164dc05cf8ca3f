"""Usage events, their rollups and the reports read from them, on SQLite."""

from __future__ import annotations

import sqlite3
import time

from ...records import UsageEvent
from ..base import BUCKETS, GROUPS, REPORT_ORDERS, DailyRow, StoreError, UsageRow, UsageTotals
from .connection import SQLiteConnection, sql_limit, upper_bound

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
SUM_COLUMNS = "requests, prompt_tokens, completion_tokens, cost, estimated"
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


class SQLiteUsage(SQLiteConnection):
    """The `Usage` part of the SQLite store."""

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
                rebuild_daily_users(conn, start, end)
                rebuild_daily_models(conn, start, end)
            return written

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
        end = upper_bound(until)
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
                [*params, sql_limit(limit), max(offset, 0)],
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
        return [event_from_row(r) for r in rows], total


def rebuild_daily_users(conn: sqlite3.Connection, start: float, end: float) -> None:
    """The per-user daily rows starting in [start, end), from the per-key day rows (fewer to read
    than the raw events)."""
    _resum(conn, "usage_daily_users", "user, model", "usage_rollups", "bucket = 'day' AND", start, end)


def rebuild_daily_models(conn: sqlite3.Connection, start: float, end: float) -> None:
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


def _day(start: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(start))


def _bucket_size(bucket: str) -> int:
    if bucket not in BUCKETS:
        raise StoreError(f"unknown rollup bucket {bucket!r} (use {' or '.join(BUCKETS)})")
    return BUCKETS[bucket]


def _filters(
    column: str, since: float, until: float | None, user: str | None, key_id: str | None, model: str | None
) -> tuple[str, list]:
    """The WHERE clause for a [since, until) range on `column` plus the optional equality filters."""
    where, params = [f"{column} >= ?", f"{column} < ?"], [since, upper_bound(until)]
    for name, value in (("user", user), ("key_id", key_id), ("model", model)):
        if value is not None:
            where.append(f"{name} = ?")
            params.append(value)
    return " AND ".join(where), params


def event_from_row(row: tuple) -> UsageEvent:
    return UsageEvent(*row[:10], streamed=bool(row[10]), estimated=bool(row[11]), endpoint=row[12])
