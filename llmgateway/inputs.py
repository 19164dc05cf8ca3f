"""Checks of what people send to the portal and the admin API, shared so both doors agree.

Each check returns the clean value or raises a 400 `GatewayError` whose message and `param`
name the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .config import LIMIT_NAMES
from .errors import bad_request

MAX_NAME = 100
MAX_EXPIRY_DAYS = 3650
MAX_LIMIT_VALUE = 1e15
MAX_PAGE = 500
MAX_OFFSET = 10_000_000
MAX_TEXT = 200
DIGITS = re.compile(r"[0-9]{1,12}")

Args = Mapping[str, str | None]
"""Query arguments as a handler passes them on (absent ones are None)."""


def page(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    """One page of a list, as every paged admin list answers it."""
    return {"items": items, "total": total, "offset": offset, "limit": limit}


def object_body(body: Any, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    for name in body:
        if name not in allowed:
            raise bad_request(f"Unknown field {name!r}.", name)
    for name in required:
        if name not in body:
            raise bad_request(f"{name} is required.", name)
    return body


def key_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("Give the key a name.", field)
    if len(value.strip()) > MAX_NAME or any(ord(c) < 0x20 for c in value):
        raise bad_request(f"The name must be at most {MAX_NAME} characters, without control characters.", field)
    return value.strip()


def model_list(value: Any, allowed: list[str], field: str = "models") -> list[str]:
    """A key's allowed models: known model ids (an empty list means every model)."""
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise bad_request("models must be a list of model ids.", field)
    for model in value:
        if model not in allowed:
            raise bad_request(f"Unknown or unavailable model {model!r}.", field)
    return sorted(set(value))


def expires_days(value: Any, field: str = "expires_days") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_EXPIRY_DAYS:
        raise bad_request(f"{field} must be a number of days from 1 to {MAX_EXPIRY_DAYS}, or null.", field)
    return float(value)


def number(value: Any, field: str, maximum: float, what: str | None = None) -> float:
    """A JSON number from 0 to `maximum` (never a string or a boolean); `what` names it in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= maximum:
        raise bad_request(f"{what or field} must be a number from 0 to {maximum:g}.", field)
    return float(value)


def limits(value: Any, names: tuple[str, ...] = LIMIT_NAMES, field: str = "limits") -> dict[str, float]:
    """Limit overrides: {name: number >= 0} (0 = no limit)."""
    if not isinstance(value, dict):
        raise bad_request(f"{field} must be an object of limits ({', '.join(names)}).", field)
    for name in value:
        if name not in names:
            raise bad_request(f"{field}.{name} is not a known limit (known: {', '.join(names)}).", field)
    return {name: number(n, field, MAX_LIMIT_VALUE, f"{field}.{name} (0 = no limit)") for name, n in value.items()}


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{field} must be true or false.", field)
    return value


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


def text(value: Any, field: str) -> str:
    """A required free-text body field, with the same bounds as `text_arg`."""
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string.", field)
    checked = text_arg(value, field)
    assert checked is not None
    return checked


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
