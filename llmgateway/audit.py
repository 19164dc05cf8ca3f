"""The audit log: who changed what, when, through which door and from where.

Every change made through the admin API, the admin UI, the portal or the CLI is recorded after
it is made. A failure to record is logged loudly but does not undo the change, which has
already happened (the store has no transaction spanning both backends' collections).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .records import AuditEntry
from .store import Store, StoreError

log = logging.getLogger("llmgateway.audit")

VIAS = ("api", "ui", "portal", "cli")


@dataclass(frozen=True)
class Actor:
    """Who is acting: a username, `token:<id>` for an admin token, `bootstrap-token`, or
    `cli:<os user>`; `via` is one of VIAS; `source` the client's address (the host for the CLI)."""

    name: str
    via: str
    source: str


def record(store: Store, actor: Actor, action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """Append one entry (blocking: run it in the store pool)."""
    entry = AuditEntry(ts=time.time(), actor=actor.name, via=actor.via, source=actor.source, action=action,
                       target=target, details=details or {})
    try:
        store.insert_audit(entry)
    except StoreError as exc:
        log.error("audit log: could not record %s %s by %s: %s", action, target, actor.name, exc)


def entry_view(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "ts": entry.ts, "actor": entry.actor, "via": entry.via, "source": entry.source,
            "action": entry.action, "target": entry.target, "details": entry.details}
