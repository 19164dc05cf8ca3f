"""The live model catalog: the config file's models plus the models added through the admin API.

The rule for models in both places: a model in the config file is managed by the config file.
The admin API and UI show it read-only (`source: "config"`) and refuse to add, change or remove
a model with its id (409). Should the store still hold an API model whose id the config file
later took, the config file's model is served and the stored one is shown as `shadowed`.

API models are kept in the store with the same settings a `[[models]]` table has (the admin API's
bodies declare their types), and checked by the same parser, so a model behaves the same wherever
it was defined. Every replica re-reads them every `admin.catalog_refresh_seconds`, and at once
when Redis announces a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..config import Config, ConfigError, ModelConfig, parse_model, resolve_secret
from ..errors import GatewayError, bad_request
from ..records import ModelRecord
from ..redact import redact_url, restore
from . import destinations

FIELDS = ("upstreams", "upstream_model", "kind", "api_key_env", "prompt_cost_per_1k", "completion_cost_per_1k",
          "active", "usage_probe", "limits")


def secret_envs(config: Config) -> set[str]:
    """The environment variables API models may take their upstream secret from: those the
    operator already gave to configured models, and `admin.model_secret_envs`. Any other
    variable could be one of the gateway's own secrets, sent to an upstream an admin chose."""
    names = {m.api_key_env for m in config.models if m.api_key_env}
    names.update(config.admin.model_secret_envs)
    if config.upstream.default_api_key_env:
        names.add(config.upstream.default_api_key_env)
    return names


def changed_settings(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """An API model's stored settings with checked `changes` (`admin.bodies`): upstream URLs sent
    back as shown, without their credentials, keep the stored ones."""
    settings = {**base, **changes}
    if "upstreams" in changes and "upstreams" in base:
        stored = [u["url"] for u in base["upstreams"]]
        settings["upstreams"] = [{**u, "url": restore(u["url"], stored)} for u in changes["upstreams"]]
    return settings


def to_model_config(model_id: str, settings: Mapping[str, Any], config: Config) -> ModelConfig:
    """The settings, checked by the config file's parser and the operator's rules on where calls
    and secrets may go (`destinations`): a 400 naming the field if either refuses them.

    An API model inherits no secret: `upstream.default_api_key_env` is for configured models.
    """
    raw = {"id": model_id, **settings}
    if "upstreams" in raw:
        raw["upstreams"] = [dict(u) for u in raw["upstreams"]]
    try:
        model = parse_model(raw, 0, replace(config.upstream, default_api_key_env=""))
    except ConfigError as exc:
        message = str(exc).replace(f"models[0] ({model_id}).", "", 1)
        field = next((f for f in FIELDS if message.startswith(f)), None)
        raise bad_request(message[:1].upper() + message[1:] + ".", field) from None
    field, reason = destinations.check_api_model(model, config)
    if reason:
        raise bad_request(reason[:1].upper() + reason[1:] + ".", field)
    return model


def check_loadable(model: ModelConfig) -> str:
    """The upstream secret, or a 400 if this replica cannot read it."""
    try:
        return resolve_secret(model)
    except ConfigError:
        raise bad_request(f"api_key_env: the environment variable {model.api_key_env} is not set on this "
                          "gateway.", "api_key_env") from None


def build(config: Config, records: list[ModelRecord]) -> tuple[list[tuple[ModelConfig, str]], dict[str, str]]:
    """Every model this replica serves (config first, then API models), and why any API model
    could not be loaded here (id -> reason)."""
    served = [(m, resolve_secret(m)) for m in config.models]
    taken = {m.id for m in config.models}
    problems: dict[str, str] = {}
    for record in records:
        if record.id in taken:
            problems[record.id] = "shadowed by the config file's model of the same id"
            continue
        try:
            model = to_model_config(record.id, record.settings, config)
            served.append((model, resolve_secret(model)))
        except (GatewayError, ConfigError) as exc:
            problems[record.id] = str(exc)
    return served, problems


def view(model: ModelConfig, source: str, record: ModelRecord | None = None, problem: str | None = None,
         health: Mapping[str, dict] | None = None) -> dict:
    """A model as the admin API shows it (never a secret: only the name of its variable, and its
    URLs without credentials); `health` gives each served upstream's state by URL, shown apart
    from `upstreams` so that a client may send those back unchanged."""
    health = health or {}
    return {
        "id": model.id,
        "source": source,
        "read_only": source == "config",
        "upstreams": [{"url": redact_url(u.url), "weight": u.weight} for u in model.upstreams],
        "upstream_health": [health.get(u.url) for u in model.upstreams],
        "upstream_model": model.upstream_model,
        "kind": model.kind,
        "api_key_env": model.api_key_env,
        "prompt_cost_per_1k": model.prompt_cost_per_1k,
        "completion_cost_per_1k": model.completion_cost_per_1k,
        "active": model.active,
        "usage_probe": model.usage_probe,
        "limits": dict(model.limits),
        "created": record.created if record else None,
        "updated": record.updated if record else None,
        "loaded": problem is None,
        "problem": problem,
    }
