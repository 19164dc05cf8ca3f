"""What the `llmgateway` commands share: one-line errors, times, the store, announcements."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime

from ..cluster.shared import announce
from ..config import Config
from ..store import Store, open_store

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def parse_time(value: str, now: float | None = None) -> float:
    """An ISO date/time (UTC if no zone) or a span back from now like 24h, 7d, 30m."""
    now = time.time() if now is None else now
    match = RELATIVE.match(value.strip())
    if match:
        return now - float(match.group(1)) * UNITS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(f"cannot read time {value!r}: use an ISO date like 2026-11-01 or a span like 7d") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def open_configured(config: Config) -> Store:
    store = open_store(config.store_url)
    store.init()
    return store


def announce_change(config: Config, kind: str, value: str, key_hashes: list[str]) -> None:
    if config.redis.url and not announce(config.redis, kind, value, key_hashes):
        print(f"warning: Redis unreachable; running gateways apply this within {config.keys.cache_ttl_seconds:g} s",
              file=sys.stderr)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number
