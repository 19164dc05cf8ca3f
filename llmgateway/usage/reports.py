"""The admin API's usage reports: sums by user, key, model or day over whole UTC days, totals,
CSV export, and the raw events of one key or person.

Reports read the daily rollups for days before yesterday and the raw events from yesterday on
(`Store.usage_report`), so a year costs no more than its rollups while recent usage is live.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import inputs
from ..gateway import Gateway
from ..inputs import Args, page
from ..store.base import GROUPS, REPORT_ORDERS, UsageRow

DEFAULT_DAYS = 30
CSV_FIELDS = ("group", "requests", "prompt_tokens", "completion_tokens", "cost", "estimated")


def live_since(now: float) -> float:
    """Midnight (UTC) starting yesterday: the rollups before it are final, raw events after it are live."""
    today = datetime.fromtimestamp(now, UTC).date()
    return inputs.midnight(today - timedelta(days=1))


class UsageReports:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.store = gateway.store

    async def report(self, args: Args, everything: bool = False) -> dict[str, Any]:
        """One page of groups (all of them when `everything`, for CSV), their count and the totals."""
        now = time.time()
        by = inputs.choice_arg(args.get("by"), "by", GROUPS) or "day"
        order = inputs.choice_arg(args.get("order"), "order", REPORT_ORDERS) or "group"
        first, last = inputs.day_range(args.get("since"), args.get("until"), DEFAULT_DAYS, now)
        user = inputs.text_arg(args.get("user"), "user")
        key_id = inputs.text_arg(args.get("key"), "key")
        model = inputs.text_arg(args.get("model"), "model")
        offset, limit = inputs.paging(args.get("offset"), args.get("limit"))
        rows, total, totals = await self.gateway.in_thread(
            lambda: self.store.usage_report(by, inputs.midnight(first), live_since(now),
                                            inputs.midnight(last) + 86400, user, key_id, model, order,
                                            0 if everything else offset, None if everything else limit))
        return {"by": by, "since": first.isoformat(), "until": last.isoformat(), "order": order,
                "rows": rows, "total": total, "totals": totals, "offset": offset, "limit": limit}

    async def csv(self, args: Args) -> str:
        report = await self.report(args, everything=True)
        return to_csv(report["rows"])

    async def events(self, args: Args) -> dict[str, Any]:
        """Raw events, newest first: of one person or key, or of everyone."""
        user = inputs.text_arg(args.get("user"), "user")
        key_id = inputs.text_arg(args.get("key"), "key")
        since, until = inputs.ts_range(args.get("since"), args.get("until"))
        offset, limit = inputs.paging(args.get("offset"), args.get("limit"))
        events, total = await self.gateway.in_thread(
            lambda: self.store.find_usage(user, key_id, since, until, offset, limit))
        return page([e.to_dict() for e in events], total, offset, limit)


def to_csv(rows: list[UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "group": _cell(str(row["group"]))})
    return out.getvalue()


def _cell(value: str) -> str:
    """Keep a spreadsheet from running a user-chosen name as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
