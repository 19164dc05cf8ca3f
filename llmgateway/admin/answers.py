"""The shapes of the admin API's answers, declared for its OpenAPI document (`handlers/openapi.py`).

Each is the dict a view builds (`Admin.user_view`, `key_view`, `catalog.view`, `token_view`,
`audit.entry_view`, the usage reports); tests/test_admin_schemathesis.py checks every answer of a
live gateway against them, so a view that grows a field must grow here too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from ..audit import VIAS
from ..config import MODEL_KINDS
from ..store.base import GROUPS, KEY_STATUSES, REPORT_ORDERS

CLOSED = ConfigDict(extra="forbid")
Time = Annotated[float | None, Field(description="Unix time in seconds.")]
Numbers = dict[str, float]


def page(item: Any, title: str) -> Any:
    """One page of a list of `item`s."""
    return with_config(CLOSED)(TypedDict(title, {"items": list[item], "total": int, "offset": int, "limit": int}))


@with_config(CLOSED)
class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


@with_config(CLOSED)
class Error(TypedDict):
    error: ErrorDetail


@with_config(CLOSED)
class Me(TypedDict):
    actor: str
    via: Literal["api", "ui"]
    person: Annotated[str | None, Field(description="Whose rights apply (null for the bootstrap token).")]
    rights: list[Literal["admin", "bootstrap", "portal"]]
    expires: Annotated[float | None, Field(description="When this credential ends (tokens it makes end by then).")]


@with_config(CLOSED)
class User(TypedDict):
    username: str
    display_name: str
    email: str
    admin: bool
    admin_source: Literal["idp", "granted", "both"] | None
    disabled: bool
    created: float
    last_login: Time
    terms_version: str | None
    limits: Numbers
    effective_limits: Numbers


@with_config(CLOSED)
class KeyCounts(TypedDict):
    active: int
    total: int


@with_config(CLOSED)
class UserDetail(User):
    keys: KeyCounts
    quota: Annotated[dict[str, Any] | None, Field(description="What is left of the person's budgets (as the portal "
                                                              "shows it); null without budgets.")]


@with_config(CLOSED)
class Key(TypedDict):
    id: str
    owner: str
    name: str
    prefix: str
    models: list[str]
    created: float
    expires: Time
    last_used: Time
    status: Literal[KEY_STATUSES]
    limits: Numbers


@with_config(CLOSED)
class KeyCreated(TypedDict):
    key: Annotated[str, Field(description="Shown only this once.")]
    record: Key


@with_config(CLOSED)
class KeyRevoked(TypedDict):
    record: Key


@with_config(CLOSED)
class ServedUpstream(TypedDict):
    url: str
    weight: float


@with_config(CLOSED)
class Check(TypedDict):
    at: float
    ok: bool
    status: int | None
    error: str | None


@with_config(CLOSED)
class UpstreamHealth(TypedDict):
    url: str
    state: Literal["healthy", "ejected", "half-open"]
    healthy: bool
    ejected_until: Annotated[float | None, Field(description="Unix time the ejection ends.")]
    trial_in_flight: bool
    consecutive_failures: int
    failed_checks: int
    failures: int
    failovers: int
    ejections: int
    in_flight: int
    last_check: Check | None


@with_config(CLOSED)
class Model(TypedDict):
    id: str
    source: Literal["config", "api"]
    read_only: bool
    upstreams: list[ServedUpstream]
    upstream_health: Annotated[list[Annotated[UpstreamHealth | None, Field(
        description="null: not served by the replica that answered.")]], Field(
        description="The state of each upstream (same order) on the replica that answered.")]
    upstream_model: str
    kind: Literal[MODEL_KINDS]
    api_key_env: str
    prompt_cost_per_1k: float
    completion_cost_per_1k: float
    active: bool
    usage_probe: bool
    limits: Numbers
    created: Time
    updated: Time
    loaded: bool
    problem: str | None


@with_config(CLOSED)
class ModelList(TypedDict):
    items: list[Model]
    total: int


@with_config(CLOSED)
class ModelDeleted(TypedDict):
    id: str
    deleted: bool


@with_config(CLOSED)
class Sums(TypedDict):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: int


@with_config(CLOSED)
class UsageRow(Sums):
    group: str


@with_config(CLOSED)
class UsageReport(TypedDict):
    by: Literal[GROUPS]
    since: str
    until: str
    order: Literal[REPORT_ORDERS]
    rows: list[UsageRow]
    total: int
    totals: Sums
    offset: int
    limit: int


@with_config(CLOSED)
class UsageEvent(TypedDict):
    ts: float
    request_id: str
    key_id: str
    user: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    status: int
    latency_ms: float
    streamed: bool
    estimated: bool


@with_config(CLOSED)
class AuditEntry(TypedDict):
    id: str
    ts: float
    actor: str
    via: Literal[VIAS]
    source: str
    action: str
    target: str
    details: dict[str, Any]


@with_config(CLOSED)
class Token(TypedDict):
    id: str
    name: str
    prefix: str
    created_by: str
    owner: Annotated[str, Field(description="The admin whose current rights the token acts with.")]
    parent: Annotated[str | None, Field(description="The token that made it: it stops with its parent and never "
                                                    "outlives it.")]
    created: float
    expires: Time
    last_used: Time
    status: Literal[KEY_STATUSES]


@with_config(CLOSED)
class TokenList(TypedDict):
    items: list[Token]
    total: int


@with_config(CLOSED)
class TokenCreated(TypedDict):
    token: Annotated[str, Field(description="Shown only this once.")]
    record: Token


@with_config(CLOSED)
class TokenRevoked(TypedDict):
    record: Token


UserPage = page(User, "UserPage")
KeyPage = page(Key, "KeyPage")
UsageEventPage = page(UsageEvent, "UsageEventPage")
AuditPage = page(AuditEntry, "AuditPage")
