"""Checks of the query arguments of the admin API's lists and reports, shared by them and the CLI.

Each check returns the clean value or raises a 400 `GatewayError` whose message and `param`
name the argument. (Request bodies are declared in `fields`.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .errors import bad_request

MAX_PAGE = 500
MAX_OFFSET = 10_000_000
MAX_TEXT = 200
DIGITS = re.compile(r"[0-9]{1,12}")

Args = Mapping[str, str | None]
"""Query arguments as a handler passes them on (absent ones are None)."""


def page(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    """One page of a list, as every paged admin list answers it."""
    return {"items": items, "total": total, "offset": offset, "limit": limit}


def integer_arg(value: str | None, field: str, default: int, minimum: int, maximum: int) -> int:
    """A whole-number query argument."""
    if value is None:
        return default
    if not DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise bad_request(f"{field} must be a whole number from {minimum} to {maximum}.", field)
    return int(value)


def paging(offset: str | None, limit: str | None) -> tuple[int, int]:
    return (integer_arg(offset, "offset", 0, 0, MAX_OFFSET), integer_arg(limit, "limit", 50, 1, MAX_PAGE))


def text_arg(value: str | None, field: str) -> str | None:
    """A free-text query argument (search, ids, names): at most MAX_TEXT characters, no control characters."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_TEXT or any(ord(c) < 0x20 for c in value):
        raise bad_request(f"{field} must be 1 to {MAX_TEXT} characters without control characters.", field)
    return value


def choice_arg(value: str | None, field: str, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise bad_request(f"{field} must be one of {', '.join(choices)}.", field)
    return value


def day_arg(value: str | None, field: str) -> date | None:
    """A UTC day as YYYY-MM-DD."""
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise bad_request(f"{field} must be a date as YYYY-MM-DD.", field) from None


def day_range(since: str | None, until: str | None, default_days: int, now: float) -> tuple[date, date]:
    """[since, until] in whole UTC days, both included; the last `default_days` days by default.
    A `since` after `until` is an empty range, not an error."""
    last = day_arg(until, "until") or datetime.fromtimestamp(now, UTC).date()
    first = day_arg(since, "since") or max(date.min, last - timedelta(days=default_days - 1))
    return first, last


def ts_range(since: str | None, until: str | None) -> tuple[float, float | None]:
    """Optional whole UTC days as [start, end) in Unix seconds (until's day included)."""
    first, last = day_arg(since, "since"), day_arg(until, "until")
    return (midnight(first) if first else 0.0), (midnight(last) + 86400 if last else None)


def midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
