"""Logging set-up and the access log, which never carries secrets.

The access line holds method, path (no query string: keys sometimes travel there), status,
duration and the gateway's request id; never headers, cookies or bodies. Tornado logs malformed
requests itself, quoting the offending header line or request line (a key, a cookie, a query
string); `WithholdTornadoDetails` keeps only that a malformed request came and from where.

`server.log_format = "json"` writes each line as one JSON object (`JsonFormatter`) for log
collectors: the same lines, through the same filter, with the access line's parts as fields of
their own (method, path, status, duration, model, user id, key id: never the key itself).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

access_log = logging.getLogger("llmgateway.access")


class Formatter(logging.Formatter):
    """UTC ISO timestamps, formatted once per second rather than once per line (hot path)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(Formatter):
    """One JSON object per line: time, level, logger, message, request_id (null when the line is
    about no request), the access line's fields, and a traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        access = getattr(record, "access", None)
        if access is not None:
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class WithholdTornadoDetails(logging.Filter):
    """Drops the details Tornado adds to its messages about malformed requests and bad cookies:
    they quote what the client sent, credentials included ("Malformed HTTP message from
    127.0.0.1: Invalid header value 'Bearer sk-lgw-...'", "Invalid cookie signature '...'")."""

    QUOTING = ("Malformed HTTP", "Unsatisfiable read", "cookie", "Cookie")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("tornado.") and isinstance(record.msg, str) and any(
                q in record.msg for q in self.QUOTING):
            head = re.split(r"[:%]", record.msg, maxsplit=1)[0].removesuffix(" from ").strip()
            record.msg = f"{head} (details not logged: they may carry credentials)"
            record.args = ()
        return True


class BufferedStreamHandler(logging.StreamHandler):
    """Writes lines through a block buffer: one access line per request, each with its own
    write syscall, cost more than parsing the request. Warnings and errors are written at once;
    the rest at the latest when `flush_logs` runs (every second) or at exit."""

    def __init__(self) -> None:
        stream = open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8", errors="replace",  # noqa: SIM115
                      closefd=False)
        super().__init__(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except Exception:
            self.handleError(record)


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    handler = BufferedStreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else Formatter())
    handler.addFilter(WithholdTornadoDetails())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def access_level(status: int) -> int | None:
    """The level of a request's access line: errors stand out; None when INFO lines are off."""
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    return logging.INFO if access_log.isEnabledFor(logging.INFO) else None


def log_request(handler: Any) -> None:
    """Tornado `log_function`: one line per request, secrets left out."""
    status = handler.get_status()
    level = access_level(status)
    if level is None:
        return
    request = handler.request
    access_log.log(
        level,
        "%d %s %s %.1fms %s",
        status,
        request.method,
        request.path,
        1000.0 * request.request_time(),
        handler._headers.get("X-Request-Id", "-"),
    )


def log_request_json(handler: Any) -> None:
    """`log_request` for `server.log_format = "json"`: the parts as fields, with who called (the
    key's id and owner, never the key) and which model, when the door knows them."""
    status = handler.get_status()
    level = access_level(status)
    if level is None:
        return
    request = handler.request
    duration = 1000.0 * request.request_time()
    request_id = handler._headers.get("X-Request-Id")
    call = getattr(handler, "call", None)
    key = getattr(handler, "key", None)
    fields = {
        "method": request.method, "path": request.path, "status": status, "duration_ms": round(duration, 3),
        "model": call.route.model.id if call is not None else None,
        "user_id": key.owner if key is not None else None,
        "key_id": key.id if key is not None else None,
    }
    access_log.log(level, "%d %s %s %.1fms", status, request.method, request.path, duration,
                   extra={"request_id": request_id, "access": fields})


def quiet_access_log() -> None:
    access_log.setLevel(logging.WARNING)
