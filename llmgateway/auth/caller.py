"""A caller and its rights: what `identity.Callers` answers at every door.

Kept apart so that the modules that check credentials (`admin_tokens`) and the one that picks the
door (`identity`) share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..audit import Actor
from ..records import KeyRecord

if TYPE_CHECKING:
    from ..portal.service import Session

API = "api"
"""Call /v1 with an API key."""
PORTAL = "portal"
"""Use the self-service portal: one's own keys, terms and usage."""
ADMIN = "admin"
"""The whole admin API and UI."""
BOOTSTRAP = "bootstrap"
"""Only what the bootstrap token may do: make the first admin and their token."""


@dataclass(frozen=True)
class Caller:
    """Who is calling and what they may do.

    `person` is whose rights apply (None for the bootstrap token); `expires` is when the
    credential ends, so that nothing it creates outlives it; `token_id` names the admin token
    used, if any.
    """

    actor: Actor
    person: str | None
    rights: frozenset[str]
    expires: float | None = None
    token_id: str = ""
    key: KeyRecord | None = None
    owner_limits: dict[str, float] = field(default_factory=dict)
    session: Session | None = None

    def may(self, right: str) -> bool:
        return right in self.rights
