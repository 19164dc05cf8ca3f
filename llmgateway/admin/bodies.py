"""The bodies of the admin API's requests, declared once: they check each request and make the
request schemas of its OpenAPI document (`handlers/openapi.py`).

What depends on the gateway's settings (how long a token may live, which hosts and secret
variables a model may name) is part of the declaration too: `token_create` and `model_bodies`
build it from those settings, and the document is made from the same classes. Which models a
key may name is checked by the door (`fields.known_models`): the portal offers fewer than the
admin API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    create_model,
)
from pydantic.json_schema import SkipJsonSchema

from ..catalog.destinations import ANY_HOST, model_hosts
from ..catalog.models import secret_envs
from ..config import MODEL_KINDS, MODEL_LIMIT_NAMES, Config
from ..fields import (
    NO_CONTROL,
    Body,
    Change,
    ExpiresDays,
    Flag,
    KeyName,
    ModelIds,
    Says,
    UnixTime,
    UserLimits,
    limits,
    person,
    refuse,
)

MAX_UPSTREAMS = 32
MAX_URL = 2000
MAX_WEIGHT = 1e6
MAX_PRICE = 1e6
URL_PATTERN = r"^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"
"""What the document says an upstream URL looks like; the config file's parser and the rules on
where calls may go (`catalog.destinations`) check it, with their own messages."""

KeyOwner = person("user must name a person.")
FirstAdmin = person("owner must name the person who becomes the first admin (1 to 200 characters).")


class UserChange(Change):
    """Grant or remove the admin role, disable or enable, replace limit overrides."""

    admin: Flag = None
    disabled: Flag = None
    limits: UserLimits = None


class KeyCreate(Body):
    """A key an admin makes for a person (who need not have logged in yet)."""

    user: KeyOwner
    name: KeyName
    models: ModelIds = Field(default_factory=list)
    expires_days: ExpiresDays = None
    limits: UserLimits = Field(default_factory=dict)


class KeyChange(Change):
    """A key's new name, models, expiry or limits."""

    name: KeyName = None
    models: ModelIds = None
    expires: UnixTime = None
    limits: UserLimits = None


def _bootstrap_only(value: Any, info: ValidationInfo) -> Any:
    if not (info.context or {}).get("bootstrap"):
        raise refuse("A token belongs to the admin who makes it; only the bootstrap token names an owner.")
    return value


def token_create(config: Config) -> type[Body]:
    """An admin token's body, where tokens live at most admin.max_token_days."""
    return _token_create(config.admin.max_token_days)


@cache
def _token_create(max_days: float) -> type[Body]:
    """Only the bootstrap token sends `owner`, the first admin (context `bootstrap`), so the
    document, written for admins, leaves it out."""
    days = Annotated[float, Field(gt=0, le=max_days, allow_inf_nan=False,
                                  description="Default admin.token_days; at most admin.max_token_days."),
                     Says(f"{{field}} must be a number of days from 1 to {max_days:g}.")]
    owner = SkipJsonSchema[Annotated[FirstAdmin, BeforeValidator(_bootstrap_only)]]
    return create_model("TokenCreate", __base__=Body, name=(KeyName, ...), expires_days=(days, None),
                        owner=(owner, None))


ModelId = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"),
                    Says("id must be 1 to 200 characters: letters, digits and . _ : / @ + - "
                         "(starting with a letter or digit).")]
Weight = Annotated[float, Field(gt=0, le=MAX_WEIGHT, allow_inf_nan=False)]
Price = Annotated[float, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False),
                  Says(f"{{field}} must be a number from 0 to {MAX_PRICE:g}.")]
ModelLimits = limits(MODEL_LIMIT_NAMES, "ModelLimits")


class ModelSettings(Body):
    """An API model's settings: those of a `[[models]]` table, whose parser then checks what they
    mean. Where its calls and secret may go depends on the gateway's settings: `model_bodies` adds
    `upstreams` and `api_key_env`."""

    sent_order: ClassVar[bool] = True

    upstream_model: Annotated[StrictStr, Field(max_length=200, pattern=NO_CONTROL),
                              Says("{field} must be a string of at most 200 characters.")] = None
    kind: Annotated[Literal[MODEL_KINDS], Says(f"kind must be one of {', '.join(MODEL_KINDS)}.")] = None
    prompt_cost_per_1k: Price = None
    completion_cost_per_1k: Price = None
    active: Flag = None
    usage_probe: Flag = None
    limits: ModelLimits = None


class ModelCreateBody(ModelSettings):
    first: ClassVar[str | None] = "id"

    id: ModelId


class ModelChangeBody(ModelSettings):
    unknown: ClassVar[Mapping[str, str]] = {"id": "Unknown field 'id' (a model's id cannot change)."}


def model_bodies(config: Config) -> tuple[type[ModelSettings], type[ModelSettings]]:
    """(ModelCreate, ModelChange) of this gateway: its upstream hosts and secret variables."""
    return _model_bodies(frozenset(secret_envs(config)), model_hosts(config))


@cache
def _model_bodies(envs: frozenset[str], hosts: tuple[str, ...]) -> tuple[type[ModelSettings], type[ModelSettings]]:
    if ANY_HOST in hosts:
        url = Annotated[StrictStr, Field(max_length=MAX_URL, json_schema_extra={"pattern": URL_PATTERN})]
    else:
        url = Annotated[StrictStr, Field(max_length=MAX_URL, json_schema_extra={"pattern": url_pattern(hosts)},
                                         description="On a host of admin.model_hosts (and, with api_key_env, of "
                                                     "its secret's hosts).")]
    upstream = create_model("Upstream", __config__=ConfigDict(extra="forbid", strict=True), url=(url, ...),
                            weight=(Weight, 1.0))
    upstreams = Annotated[list[Annotated[url | upstream, Says(_upstream_words)]],  # type: ignore[valid-type]
                          Field(min_length=1, max_length=MAX_UPSTREAMS), AfterValidator(_pool),
                          Says(f"upstreams must be a list of 1 to {MAX_UPSTREAMS} URLs or {{url, weight}} objects.")]
    names = ", ".join(sorted(envs)) or "none: see admin.model_secret_envs"
    env = Annotated[Literal[("", *sorted(envs))],
                    Field(description="'' or an environment variable allowed for upstream secrets "
                                      "(see admin.model_secret_envs)."),
                    Says(f"api_key_env must be '' or an environment variable allowed for upstream secrets ({names}).")]
    fields: dict[str, Any] = {"upstreams": (upstreams, None), "api_key_env": (env, None)}
    return (create_model("ModelCreate", __base__=ModelCreateBody, **fields),
            create_model("ModelChange", __base__=ModelChangeBody, **fields))


def _upstream_words(item: Any) -> str:
    if isinstance(item, str):
        return f"an upstream's weight must be more than 0 and its URL at most {MAX_URL} characters."
    if not isinstance(item, dict) or set(item) - {"url", "weight"} or not isinstance(item.get("url"), str):
        return "each upstream must be a URL string or an object {url, weight}."
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= MAX_WEIGHT:
        return f"an upstream's weight must be a number from 0 to {MAX_WEIGHT:g}."
    return f"an upstream's weight must be more than 0 and its URL at most {MAX_URL} characters."


def _pool(items: list[Any]) -> list[dict[str, Any]]:
    """Upstreams as stored: {url, weight} each."""
    return [{"url": u, "weight": 1.0} if isinstance(u, str) else u.model_dump() for u in items]


def url_pattern(hosts: tuple[str, ...]) -> str:
    """A URL pattern that admits only these hosts (`host:port`, or `host` for any port)."""
    choices = []
    for entry in hosts:
        host, _, port = entry.rpartition(":") if not entry.endswith("]") and ":" in entry else (entry, "", "")
        name = re.escape(host)
        if not port:
            choices.append(f"https?://{name}(:[0-9]{{1,5}})?")
            continue
        choices.append(f"https?://{name}:{port}")
        if port in ("80", "443"):
            choices.append(f"{'http' if port == '80' else 'https'}://{name}")
    return rf"^({'|'.join(choices) or '(?!)'})(/[A-Za-z0-9._~/-]*)?$"
