"""The records the gateway keeps, the same in every store backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    def usable(self, now: float) -> bool:
        return self.active and (self.expires is None or now < self.expires)

    def status(self, now: float) -> str:
        """"revoked", "expired" or "active", as the CLI and the portal show it."""
        if not self.active:
            return "revoked"
        return "active" if self.usable(now) else "expired"

    def allows(self, model_id: str) -> bool:
        return not self.models or model_id in self.models


@dataclass
class UserRecord:
    """A person, as the IdP names them; `limits` overrides the configured defaults for them."""

    username: str
    display_name: str = ""
    email: str = ""
    is_admin: bool = False
    created: float = 0.0
    last_login: float | None = None
    agreement_version: str | None = None
    limits: dict[str, float] = field(default_factory=dict)


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
