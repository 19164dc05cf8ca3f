"""Credentials inside URLs (`https://user:secret@host/`) are never shown or logged.

An upstream URL may carry a user and password (basic auth to a proxy in front of a GPU server).
Everything that shows or logs a URL (the admin API and UI, the audit log, log lines, configuration
errors) passes it through `redact_url`, which keeps the scheme, host, port and path and replaces
the user-info with `***`. An admin who edits a model sends the redacted URL back unchanged;
`restore` puts the stored one in its place, so a redacted URL never overwrites a real one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"


def redact_url(url: str) -> str:
    """`url` without the credentials it may carry (unchanged if it carries none)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{HIDDEN}@{host}", parts.path, parts.query, parts.fragment))


def redact_upstreams(value: Any) -> Any:
    """A model's `upstreams` setting (URL strings or {url, weight}) with every URL redacted."""
    if not isinstance(value, list):
        return value
    return [redact_url(u) if isinstance(u, str) else
            {**u, "url": redact_url(u["url"])} if isinstance(u, dict) and isinstance(u.get("url"), str) else u
            for u in value]


def restore(url: str, stored: Iterable[str]) -> str:
    """The stored URL whose redacted form `url` is, or `url` itself."""
    if HIDDEN not in url:
        return url
    return next((s for s in stored if redact_url(s) == url and s != url), url)
