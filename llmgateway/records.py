"""The records the gateway keeps, the same in every store backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def status(active: bool, expires: float | None, now: float) -> str:
    """"revoked", "expired" or "active": the life of a key or an admin token."""
    if not active:
        return "revoked"
    return "active" if expires is None or now < expires else "expired"


@dataclass
class KeyRecord:
    """An API key as stored: never the key itself, only its SHA-256 hash and a display prefix."""

    id: str
    owner: str
    name: str
    hash: str
    prefix: str
    created: float
    expires: float | None = None
    active: bool = True
    last_used: float | None = None
    models: list[str] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)
    owner_disabled: bool = False
    """Not stored: filled in when the gateway loads the key with its owner, so that disabling a
    person refuses all their keys through the same caches that carry revocations."""

    def usable(self, now: float) -> bool:
        return status(self.active, self.expires, now) == "active"

    def status(self, now: float) -> str:
        """"revoked", "expired" or "active", as the CLI and the portal show it."""
        return status(self.active, self.expires, now)

    def allows(self, model_id: str) -> bool:
        return not self.models or model_id in self.models


@dataclass
class UserRecord:
    """A person, as the IdP names them; `limits` overrides the configured defaults for them.

    `is_admin` is what the IdP's admin rule said at the last login (refreshed at every login);
    `admin_granted` is the admin role given by another admin or the CLI (kept across logins).
    """

    username: str
    display_name: str = ""
    email: str = ""
    is_admin: bool = False
    created: float = 0.0
    last_login: float | None = None
    agreement_version: str | None = None
    limits: dict[str, float] = field(default_factory=dict)
    admin_granted: bool = False
    disabled: bool = False

    @property
    def admin(self) -> bool:
        return self.is_admin or self.admin_granted


@dataclass
class UsageEvent:
    """One metered request; append-only and identified by its request id."""

    ts: float
    request_id: str
    key_id: str
    user: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    status: int
    latency_ms: float
    streamed: bool
    estimated: bool
    endpoint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelRecord:
    """A model added through the admin API; `settings` holds what a `[[models]]` table would
    (every key but `id`), so the config file's validation applies to both alike."""

    id: str
    settings: dict[str, Any]
    created: float
    updated: float


@dataclass
class AdminToken:
    """A bearer token for the admin API: stored as its SHA-256 hash, shown once, revocable, expiring.

    `owner` is the admin it belongs to: the token acts with that person's current rights, so it
    stops working when they lose the admin role or are disabled. `parent` is the token that
    minted it ("" for one made by a person or the CLI): a token dies with its parent, and never
    outlives it.
    """

    id: str
    name: str
    hash: str
    prefix: str
    created_by: str
    created: float
    expires: float | None
    active: bool = True
    last_used: float | None = None
    owner: str = ""
    parent: str = ""

    def usable(self, now: float) -> bool:
        return status(self.active, self.expires, now) == "active"

    def status(self, now: float) -> str:
        return status(self.active, self.expires, now)


@dataclass
class AuditEntry:
    """One change to the gateway's state: who (`actor`), through which door (`via`: api, ui,
    portal or cli), from where (`source`: client address, or host for the CLI), what and when."""

    ts: float
    actor: str
    via: str
    source: str
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)
    id: str = ""
