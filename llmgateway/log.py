"""Logging set-up and the access log, which never carries secrets.

The access line holds method, path (no query string: keys sometimes travel there), status,
duration and the gateway's request id; never headers, cookies or bodies.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

access_log = logging.getLogger("llmgateway.access")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def log_request(handler: Any) -> None:
    """Tornado `log_function`: one line per request, secrets left out."""
    status = handler.get_status()
    if status >= 500:
        emit = access_log.error
    elif status >= 400:
        emit = access_log.warning
    elif access_log.isEnabledFor(logging.INFO):
        emit = access_log.info
    else:
        return
    request = handler.request
    emit(
        "%d %s %s %.1fms %s",
        status,
        request.method,
        request.path,
        1000.0 * request.request_time(),
        handler._headers.get("X-Request-Id", "-"),
    )


def quiet_access_log() -> None:
    access_log.setLevel(logging.WARNING)
