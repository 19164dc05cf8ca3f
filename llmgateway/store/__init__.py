"""Store backends behind one interface in parts by concern (see base), chosen by URL."""

from __future__ import annotations

from urllib.parse import parse_qs

from .base import BUCKETS, DailyRow, RollupRow, Store, StoreError, UsageRow


def open_store(url: str) -> Store:
    """Open the backend that `url` names: sqlite:///path[?timeout=SECONDS] or mongodb[+srv]://host/database."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        path, _, query = url[len("sqlite:///"):].partition("?")
        params = parse_qs(query)
        try:
            timeout = float(params.get("timeout", ["10"])[0])
        except ValueError:
            raise StoreError(f"store URL: timeout {params['timeout'][0]!r} is not a number") from None
        return SQLiteStore(path, timeout)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from .mongo import MongoStore

        return MongoStore(url)
    raise StoreError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")


__all__ = ["BUCKETS", "DailyRow", "RollupRow", "Store", "StoreError", "UsageRow", "open_store"]
