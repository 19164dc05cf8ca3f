"""Configuration: one TOML file plus environment overrides, validated once at start.

A Kubernetes deployment sets the listen address, store URL, default upstream URL and secrets
through the environment; everything else lives in the file. Any invalid value stops the start
with one `ConfigError` that names the setting: unknown sections and keys first, then each
section in the order of `SECTIONS`, its settings in the order they are declared.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic_core import ErrorDetails, PydanticCustomError

from .sections import ENV_OVERRIDES, SECTIONS, Config, ModelConfig, PortalConfig, UpstreamConfig, settings_of
from .types import as_bool


class ConfigError(Exception):
    """Invalid configuration; the message names the setting."""


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides and validate."""
    env = os.environ if environ is None else environ
    path = path or env.get("LLMGW_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path!r} is a directory, not a TOML file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path!r} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"[{section}] must be a table")
            raw[section][key] = env[var]
    return parse_config(raw, source=path or "<defaults>")


def parse_config(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Turn a parsed TOML document into a validated `Config`."""
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section {sorted(unknown)[0]!r} (known: {', '.join(sorted(SECTIONS))})")
    parts: dict[str, Any] = {"source": source}
    for name, cls in SECTIONS.items():
        if name == "models":
            parts["models"] = _parse_models(raw.get("models", []), parts["upstream"])
            continue
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        _reject_unknown(table, name, cls)
        if name == "portal":
            parts["portal"] = _parse_portal(table, parts)
        else:
            parts[name] = _validated(cls, table, name)
    del parts["saml"]
    return _validated(Config, parts, "")


def parse_model(raw: Any, index: int, upstream: UpstreamConfig) -> ModelConfig:
    """One `[[models]]` table (or an API model's settings) as the index-th model; a model with no
    `upstreams` is served from `upstream.default_url`, and one naming no secret takes
    `upstream.default_api_key_env`."""
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _reject_unknown(raw, where, ModelConfig)
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ConfigError(f"{where}.id must be a non-empty string")
    where = f"models[{index}] ({model_id})"
    upstreams = raw.get("upstreams")
    if upstreams is None:
        if not upstream.default_url:
            raise ConfigError(f"{where}.upstreams is missing and upstream.default_url (LLM_DEFAULT_URL) is not set")
        upstreams = [f"{upstream.default_url}/{model_id}"]
    if not isinstance(upstreams, list) or not upstreams:
        raise ConfigError(f"{where}.upstreams must be a non-empty list of URLs")
    data = {**raw, "upstreams": upstreams}
    if data.get("api_key_env", "") == "":
        data["api_key_env"] = upstream.default_api_key_env
    return _validated(ModelConfig, data, where)


def resolve_secret(model: ModelConfig, environ: Mapping[str, str] | None = None) -> str:
    """The upstream secret for a model, from its environment variable or file ('' if none)."""
    env = os.environ if environ is None else environ
    if model.api_key_file:
        try:
            return Path(model.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"models ({model.id}).api_key_file: cannot read: {exc.strerror}") from None
    if model.api_key_env:
        value = env.get(model.api_key_env)
        if value is None:
            raise ConfigError(f"models ({model.id}).api_key_env: environment variable {model.api_key_env} is not set")
        return value.strip()
    return ""


def _parse_models(raw: Any, upstream: UpstreamConfig) -> tuple[ModelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("models must be an array of tables ([[models]])")
    return tuple(parse_model(m, i, upstream) for i, m in enumerate(raw))


def _parse_portal(table: dict[str, Any], parts: dict[str, Any]) -> PortalConfig | None:
    """None unless `portal.enabled` (the other settings are then not checked, as they are not used);
    the development login's public URL is the listen address. A bad `enabled` or `dev_login` is
    refused as any bad setting is."""
    try:
        if not as_bool(table.get("enabled", False)):
            return None
        dev_login = as_bool(table.get("dev_login", False))
    except PydanticCustomError:
        return _validated(PortalConfig, table, "portal")
    server = parts["server"]
    if dev_login and not str(table.get("public_url", "")).rstrip("/"):
        host = f"[{server.host}]" if ":" in server.host else server.host
        table = {**table, "public_url": f"http://{host}:{server.port}"}
    return _validated(PortalConfig, {**table, "saml": parts["saml"]}, "portal")


def _reject_unknown(table: Mapping[str, Any], where: str, cls: type) -> None:
    allowed = settings_of(cls)
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key} is not a known setting (known: {', '.join(sorted(allowed))})")


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _validated(cls: type, data: Mapping[str, Any], where: str) -> Any:
    try:
        return _inline(_adapter(cls).validate_python(data))
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0], where)) from None


def _inline(value: Any) -> Any:
    """A validated section copied attribute by attribute into a fresh instance (its parts too).

    Pydantic hands back instances whose `__dict__` it assigned whole; CPython reads attributes of
    such an instance about a third slower than of one whose attributes were set one by one, as a
    stdlib dataclass's are, and the `/v1` path reads settings on every call."""
    if isinstance(value, tuple):
        return tuple(_inline(v) for v in value)
    if not is_pydantic_dataclass(type(value)):
        return value
    copy = object.__new__(type(value))
    for key, part in value.__dict__.items():
        object.__setattr__(copy, key, _inline(part))
    return copy


def _message(error: ErrorDetails, where: str) -> str:
    """One pydantic error as the message the file's reader gets: the dotted setting, then what is wrong."""
    name = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    context = error.get("ctx") or {}
    if error["type"] != "setting":
        return f"{name}: {error['msg']}"
    if context["whole"]:
        return context["message"]
    if context["key"]:
        name = f"{name}.{context['key']}"
    return f"{name}{' ' if context['bare'] else ': '}{context['message']}"
