"""Configuration: one TOML file plus environment overrides, validated once at start.

A Kubernetes deployment sets the listen address, store URL, default upstream URL and secrets
through the environment; everything else lives in the file. Any invalid value stops the start
with one `ConfigError` that names the setting.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .redact import redact_url

if TYPE_CHECKING:
    from .portal_config import PortalConfig

MODEL_KINDS = ("chat", "completion", "embedding")
LIMIT_NAMES = (
    "requests_per_minute", "tokens_per_minute", "concurrent_requests",
    "cost_per_day", "cost_per_week", "tokens_per_day", "tokens_per_week",
)
MODEL_LIMIT_NAMES = LIMIT_NAMES[:3]
HEALTH_SETTINGS = ("health_check_path", "health_check_seconds", "eject_after_failures", "eject_seconds",
                   "eject_max_seconds", "failover_on_busy")
MIN_LEASE_SECONDS = 3.0
MIN_PROGRESS_SECONDS = 0.1
MIN_HEALTH_CHECK_SECONDS = 0.1
LOG_FORMATS = ("text", "json")

ENV_OVERRIDES = {
    "LLMGW_LISTEN": ("server", "listen"),
    "LLMGW_METRICS_LISTEN": ("metrics", "listen"),
    "LLMGW_STORE_URL": ("store", "url"),
    "LLMGW_SPOOL_DIR": ("usage", "spool_dir"),
    "LLMGW_REDIS_URL": ("redis", "url"),
    "LLM_DEFAULT_URL": ("upstream", "default_url"),
    "LLMGW_DEFAULT_URL": ("upstream", "default_url"),
    "LLMGW_PUBLIC_URL": ("portal", "public_url"),
}


class ConfigError(Exception):
    """Invalid configuration; the message names the setting."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 10 * 1024 * 1024
    drain_seconds: float = 30.0
    access_log: bool = True
    body_timeout_seconds: float = 60.0
    max_headers: int = 100
    max_header_bytes: int = 32 * 1024
    log_format: str = "text"


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus listener: off unless `listen` is set, never the public port."""

    host: str = ""
    port: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True)
class UpstreamConfig:
    max_clients: int = 1000
    connect_timeout: float = 5.0
    request_timeout: float = 600.0
    idle_timeout: float = 120.0
    default_url: str = ""
    default_api_key_env: str = ""


@dataclass(frozen=True)
class KeysConfig:
    cache_ttl_seconds: float = 10.0
    negative_ttl_seconds: float = 5.0
    cache_max_entries: int = 100_000
    negative_max_entries: int = 100_000


@dataclass(frozen=True)
class UsageConfig:
    flush_interval_seconds: float = 2.0
    spool_dir: str = "./usage-spool"
    max_buffer_events: int = 200_000
    flush_batch: int = 5_000
    journal_dir: str = "./usage-spool/journal"
    journal_progress_seconds: float = 1.0


@dataclass(frozen=True)
class LimitsConfig:
    key: dict[str, float] = field(default_factory=dict)
    user: dict[str, float] = field(default_factory=dict)
    prompt_bytes_per_token: float = 1.0
    default_max_tokens: int = 1024
    concurrency_lease_seconds: float = 30.0


@dataclass(frozen=True)
class RedisConfig:
    url: str = ""
    on_failure: str = "local"
    timeout_seconds: float = 0.5
    key_cache_ttl_seconds: float = 300.0
    reconcile_interval_seconds: float = 30.0


@dataclass(frozen=True)
class JobsConfig:
    rollup_interval_seconds: float = 300.0
    retention_days: float = 90.0
    retention_interval_seconds: float = 3600.0


@dataclass(frozen=True)
class AdminConfig:
    bootstrap_token_env: str = "LLMGW_ADMIN_TOKEN"
    token_days: float = 90.0
    max_token_days: float = 365.0
    catalog_refresh_seconds: float = 5.0
    model_secret_envs: tuple[str, ...] = ()
    model_hosts: tuple[str, ...] | None = None
    """Hosts API models may call (None: those of the configured models; see `destinations`)."""
    secret_hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per secret variable, further hosts it may be sent to (see `destinations`)."""


@dataclass(frozen=True)
class Upstream:
    url: str
    weight: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    id: str
    upstreams: tuple[Upstream, ...]
    upstream_model: str = ""
    kind: str = "chat"
    api_key_env: str = ""
    api_key_file: str = ""
    prompt_cost_per_1k: float = 0.0
    completion_cost_per_1k: float = 0.0
    active: bool = True
    usage_probe: bool = True
    limits: dict[str, float] = field(default_factory=dict)
    health_check_path: str = "/health"
    health_check_seconds: float = 10.0
    eject_after_failures: int = 3
    eject_seconds: float = 10.0
    eject_max_seconds: float = 300.0
    failover_on_busy: bool = True

    @property
    def free(self) -> bool:
        return not (self.prompt_cost_per_1k or self.completion_cost_per_1k)

    @property
    def target_model(self) -> str:
        """The model name the upstream expects."""
        return self.upstream_model or self.id


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    store_url: str = "sqlite:///llmgateway.db"
    keys: KeysConfig = field(default_factory=KeysConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    models: tuple[ModelConfig, ...] = ()
    source: str = "<defaults>"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    portal: PortalConfig | None = None
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


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
    known = {"server", "upstream", "store", "keys", "usage", "models", "limits", "redis", "jobs", "portal", "saml",
             "admin", "metrics"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown section {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    server_raw = _table(raw, "server")
    host, port = parse_listen(server_raw.get("listen", "127.0.0.1:8000"))
    server = ServerConfig(
        host=host,
        port=port,
        max_body_bytes=_int(server_raw, "server.max_body_bytes", 10 * 1024 * 1024, minimum=1024),
        drain_seconds=_number(server_raw, "server.drain_seconds", 30.0),
        access_log=_bool(server_raw, "server.access_log", True),
        body_timeout_seconds=_number(server_raw, "server.body_timeout_seconds", 60.0),
        max_headers=_int(server_raw, "server.max_headers", 100, minimum=10),
        max_header_bytes=_int(server_raw, "server.max_header_bytes", 32 * 1024, minimum=4096),
        log_format=_str(server_raw, "server.log_format", "text"),
    )
    if server.log_format not in LOG_FORMATS:
        raise ConfigError(f"server.log_format: {server.log_format!r} must be 'text' or 'json'")
    if server.body_timeout_seconds <= 0:
        raise ConfigError("server.body_timeout_seconds must be > 0")
    if server.max_header_bytes > 128 * 1024:
        raise ConfigError("server.max_header_bytes must be at most 131072")
    _reject_unknown(server_raw, "server", {"listen", "max_body_bytes", "drain_seconds", "access_log",
                                           "body_timeout_seconds", "max_headers", "max_header_bytes",
                                           "log_format"})

    up_raw = _table(raw, "upstream")
    _reject_unknown(
        up_raw,
        "upstream",
        {"max_clients", "connect_timeout", "request_timeout", "idle_timeout", "default_url", "default_api_key_env"},
    )
    default_url = str(up_raw.get("default_url", "")).rstrip("/")
    if default_url:
        _check_url(default_url, "upstream.default_url")
    upstream = UpstreamConfig(
        max_clients=_int(up_raw, "upstream.max_clients", 1000, minimum=1),
        connect_timeout=_number(up_raw, "upstream.connect_timeout", 5.0),
        request_timeout=_number(up_raw, "upstream.request_timeout", 600.0),
        idle_timeout=_number(up_raw, "upstream.idle_timeout", 120.0),
        default_url=default_url,
        default_api_key_env=_str(up_raw, "upstream.default_api_key_env", ""),
    )

    store_raw = _table(raw, "store")
    _reject_unknown(store_raw, "store", {"url"})
    store_url = _str(store_raw, "store.url", "sqlite:///llmgateway.db")
    scheme, _, rest = store_url.partition("://")
    sqlite_ok = scheme == "sqlite" and len(rest.partition("?")[0]) > 1 and rest.startswith("/")
    if not sqlite_ok and not (scheme in ("mongodb", "mongodb+srv") and rest):
        shown = store_url if scheme == "sqlite" else f"{scheme}://..."  # any other URL may carry a password
        raise ConfigError(
            f"store.url: {shown!r} is not supported (use sqlite:///path/to/file.db or mongodb://host:port/database)"
        )

    keys_raw = _table(raw, "keys")
    _reject_unknown(keys_raw, "keys", {"cache_ttl_seconds", "negative_ttl_seconds", "cache_max_entries",
                                       "negative_max_entries"})
    keys = KeysConfig(
        cache_ttl_seconds=_number(keys_raw, "keys.cache_ttl_seconds", 10.0),
        negative_ttl_seconds=_number(keys_raw, "keys.negative_ttl_seconds", 5.0),
        cache_max_entries=_int(keys_raw, "keys.cache_max_entries", 100_000, minimum=1),
        negative_max_entries=_int(keys_raw, "keys.negative_max_entries", 100_000, minimum=1),
    )

    usage_raw = _table(raw, "usage")
    _reject_unknown(usage_raw, "usage", {"flush_interval_seconds", "spool_dir", "max_buffer_events", "flush_batch",
                                         "journal_dir", "journal_progress_seconds"})
    spool_dir = _str(usage_raw, "usage.spool_dir", "./usage-spool")
    progress = _number(usage_raw, "usage.journal_progress_seconds", 1.0)
    if progress < MIN_PROGRESS_SECONDS:
        raise ConfigError(f"usage.journal_progress_seconds: {progress!r} must be >= {MIN_PROGRESS_SECONDS:g}")
    usage = UsageConfig(
        flush_interval_seconds=_number(usage_raw, "usage.flush_interval_seconds", 2.0),
        spool_dir=spool_dir,
        max_buffer_events=_int(usage_raw, "usage.max_buffer_events", 200_000, minimum=1),
        flush_batch=_int(usage_raw, "usage.flush_batch", 5_000, minimum=1),
        journal_dir=_str(usage_raw, "usage.journal_dir", "") or str(Path(spool_dir) / "journal"),
        journal_progress_seconds=progress,
    )

    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list):
        raise ConfigError("models must be an array of tables ([[models]])")
    models = tuple(_parse_model(m, i, upstream) for i, m in enumerate(models_raw))
    seen: set[str] = set()
    for m in models:
        if m.id in seen:
            raise ConfigError(f"models: id {m.id!r} appears twice")
        seen.add(m.id)
    from .catalog.destinations import check_config  # imported here: it builds on this module's types
    from .portal_config import parse_portal  # imported here: it builds on this module's helpers

    config = Config(server, upstream, store_url, keys, usage, models, source, _parse_limits(raw), _parse_redis(raw),
                    _parse_jobs(raw), parse_portal(raw, server), _parse_admin(raw), _parse_metrics(raw, server))
    check_config(config)
    return config


def parse_limit_values(raw: Any, where: str, allowed: tuple[str, ...] = LIMIT_NAMES) -> dict[str, float]:
    """A table of limits (0 = none), as in [limits.key], [limits.user] and a model's `limits`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table of limits")
    _reject_unknown(raw, where, set(allowed))
    return {name: _number(raw, f"{where}.{name}", 0.0) for name in raw}


def _parse_limits(raw: Mapping[str, Any]) -> LimitsConfig:
    table = _table(raw, "limits")
    _reject_unknown(table, "limits", {"key", "user", "prompt_bytes_per_token", "default_max_tokens",
                                      "concurrency_lease_seconds"})
    per_token = _number(table, "limits.prompt_bytes_per_token", 1.0)
    if per_token < 1:
        raise ConfigError(f"limits.prompt_bytes_per_token: {per_token!r} must be >= 1")
    lease = _number(table, "limits.concurrency_lease_seconds", 30.0)
    if lease < MIN_LEASE_SECONDS:
        raise ConfigError(f"limits.concurrency_lease_seconds: {lease!r} must be >= {MIN_LEASE_SECONDS:g} "
                          "(open calls renew their slots every third of it)")
    return LimitsConfig(
        key=parse_limit_values(table.get("key", {}), "limits.key"),
        user=parse_limit_values(table.get("user", {}), "limits.user"),
        prompt_bytes_per_token=per_token,
        default_max_tokens=_int(table, "limits.default_max_tokens", 1024, minimum=1),
        concurrency_lease_seconds=lease,
    )


def _parse_redis(raw: Mapping[str, Any]) -> RedisConfig:
    table = _table(raw, "redis")
    _reject_unknown(table, "redis", {"url", "on_failure", "timeout_seconds", "key_cache_ttl_seconds",
                                     "reconcile_interval_seconds"})
    url = _str(table, "redis.url", "")
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("redis.url: must start with redis://, rediss:// or unix://")
    on_failure = _str(table, "redis.on_failure", "local")
    if on_failure not in ("local", "refuse"):
        raise ConfigError(f"redis.on_failure: {on_failure!r} must be 'local' or 'refuse'")
    timeout = _number(table, "redis.timeout_seconds", 0.5)
    if timeout <= 0:
        raise ConfigError("redis.timeout_seconds must be > 0")
    return RedisConfig(
        url=url,
        on_failure=on_failure,
        timeout_seconds=timeout,
        key_cache_ttl_seconds=_number(table, "redis.key_cache_ttl_seconds", 300.0),
        reconcile_interval_seconds=max(1.0, _number(table, "redis.reconcile_interval_seconds", 30.0)),
    )


def _parse_jobs(raw: Mapping[str, Any]) -> JobsConfig:
    table = _table(raw, "jobs")
    _reject_unknown(table, "jobs", {"rollup_interval_seconds", "retention_days", "retention_interval_seconds"})
    retention_days = _number(table, "jobs.retention_days", 90.0)
    if 0 < retention_days < 31:
        raise ConfigError("jobs.retention_days must be 0 (keep for ever) or >= 31: the portal shows 30 days")
    return JobsConfig(
        rollup_interval_seconds=max(1.0, _number(table, "jobs.rollup_interval_seconds", 300.0)),
        retention_days=retention_days,
        retention_interval_seconds=max(1.0, _number(table, "jobs.retention_interval_seconds", 3600.0)),
    )


def _parse_admin(raw: Mapping[str, Any]) -> AdminConfig:
    table = _table(raw, "admin")
    from .catalog.destinations import parse_host_entry  # imported here: it builds on this module's types

    _reject_unknown(table, "admin", {"bootstrap_token_env", "token_days", "max_token_days",
                                     "catalog_refresh_seconds", "model_secret_envs", "model_hosts", "secret_hosts"})
    max_days = _number(table, "admin.max_token_days", 365.0)
    token_days = _number(table, "admin.token_days", 90.0)
    if not 0 < token_days <= max_days:
        raise ConfigError("admin.token_days must be more than 0 and at most admin.max_token_days")
    envs = table.get("model_secret_envs", [])
    if not isinstance(envs, list) or not all(isinstance(e, str) and e for e in envs):
        raise ConfigError(f"admin.model_secret_envs: {envs!r} must be a list of environment variable names")
    model_hosts = table.get("model_hosts")
    if model_hosts is not None:
        if not isinstance(model_hosts, list):
            raise ConfigError(f"admin.model_hosts: {model_hosts!r} must be a list of hosts (host or host:port, or '*')")
        model_hosts = tuple(parse_host_entry(h, "admin.model_hosts", allow_any=True) for h in model_hosts)
    secret_raw = table.get("secret_hosts", {})
    if not isinstance(secret_raw, dict):
        raise ConfigError("admin.secret_hosts must be a table: VARIABLE = [\"host\", \"host:port\", ...]")
    secret_hosts = {}
    for env_var, hosts in secret_raw.items():
        setting = f"admin.secret_hosts.{env_var}"
        if not isinstance(hosts, list) or not hosts:
            raise ConfigError(f"{setting}: {hosts!r} must be a non-empty list of hosts (host or host:port)")
        secret_hosts[env_var] = tuple(parse_host_entry(h, setting, allow_any=False) for h in hosts)
    return AdminConfig(
        bootstrap_token_env=_str(table, "admin.bootstrap_token_env", "LLMGW_ADMIN_TOKEN"),
        token_days=token_days,
        max_token_days=max_days,
        catalog_refresh_seconds=max(1.0, _number(table, "admin.catalog_refresh_seconds", 5.0)),
        model_secret_envs=tuple(envs),
        model_hosts=model_hosts,
        secret_hosts=secret_hosts,
    )


def _parse_metrics(raw: Mapping[str, Any], server: ServerConfig) -> MetricsConfig:
    table = _table(raw, "metrics")
    _reject_unknown(table, "metrics", {"listen"})
    listen = _str(table, "metrics.listen", "")
    if not listen:
        return MetricsConfig()
    host, port = parse_listen(listen, "metrics.listen")
    if port == server.port:
        raise ConfigError(f"metrics.listen: port {port} is the public port (server.listen); metrics need a port "
                          "of their own, reachable only from inside the cluster")
    return MetricsConfig(host, port)


def parse_listen(value: Any, setting: str = "server.listen") -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:8000")."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{setting}: {value!r} is not host:port")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{setting}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535 or not host:
        raise ConfigError(f"{setting}: {value!r} is not host:port")
    return host, port


def _parse_model(raw: Any, index: int, upstream: UpstreamConfig) -> ModelConfig:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _reject_unknown(
        raw,
        where,
        {
            "id", "upstreams", "upstream_model", "kind", "api_key_env", "api_key_file",
            "prompt_cost_per_1k", "completion_cost_per_1k", "active", "usage_probe", "limits",
            *HEALTH_SETTINGS,
        },
    )
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ConfigError(f"{where}.id must be a non-empty string")
    where = f"models[{index}] ({model_id})"
    ups_raw = raw.get("upstreams")
    if ups_raw is None:
        if not upstream.default_url:
            raise ConfigError(f"{where}.upstreams is missing and upstream.default_url (LLM_DEFAULT_URL) is not set")
        ups_raw = [f"{upstream.default_url}/{model_id}"]
    if not isinstance(ups_raw, list) or not ups_raw:
        raise ConfigError(f"{where}.upstreams must be a non-empty list of URLs")
    ups = []
    for j, u in enumerate(ups_raw):
        name = f"{where}.upstreams[{j}]"
        if isinstance(u, str):
            url, weight = u, 1.0
        elif isinstance(u, dict) and isinstance(u.get("url"), str):
            url, weight = u["url"], u.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"{name}.weight must be a positive number")
        else:
            raise ConfigError(f"{name} must be a URL string or {{url = ..., weight = ...}}")
        url = url.rstrip("/")
        _check_url(url, name)
        ups.append(Upstream(url, float(weight)))
    kind = raw.get("kind", "chat")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(MODEL_KINDS)}")
    api_key_env = _str(raw, f"{where}.api_key_env", "") or upstream.default_api_key_env
    api_key_file = _str(raw, f"{where}.api_key_file", "")
    return ModelConfig(
        id=model_id,
        upstreams=tuple(ups),
        upstream_model=_str(raw, f"{where}.upstream_model", ""),
        kind=kind,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        prompt_cost_per_1k=_number(raw, f"{where}.prompt_cost_per_1k", 0.0),
        completion_cost_per_1k=_number(raw, f"{where}.completion_cost_per_1k", 0.0),
        active=_bool(raw, f"{where}.active", True),
        usage_probe=_bool(raw, f"{where}.usage_probe", True),
        limits=parse_limit_values(raw.get("limits", {}), f"{where}.limits", MODEL_LIMIT_NAMES),
        **_parse_health(raw, where),
    )



def _parse_health(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A model's active health check, passive ejection and failover settings (see routing)."""
    path = _str(raw, f"{where}.health_check_path", "/health")
    if not path.startswith("/") or any(c in path for c in "?# ") or any(ord(c) < 0x21 for c in path):
        raise ConfigError(f"{where}.health_check_path: {path!r} must be a path starting with '/' "
                          "(no query, fragment or spaces)")
    seconds = _number(raw, f"{where}.health_check_seconds", 10.0)
    if 0 < seconds < MIN_HEALTH_CHECK_SECONDS:
        raise ConfigError(f"{where}.health_check_seconds: {seconds!r} must be 0 (no active checks) or "
                          f">= {MIN_HEALTH_CHECK_SECONDS:g}")
    eject = _number(raw, f"{where}.eject_seconds", 10.0)
    if eject <= 0:
        raise ConfigError(f"{where}.eject_seconds: {eject!r} must be > 0")
    eject_max = _number(raw, f"{where}.eject_max_seconds", max(300.0, eject))
    if eject_max < eject:
        raise ConfigError(f"{where}.eject_max_seconds: {eject_max!r} must be >= eject_seconds ({eject:g})")
    return {
        "health_check_path": path,
        "health_check_seconds": seconds,
        "eject_after_failures": _int(raw, f"{where}.eject_after_failures", 3, minimum=1),
        "eject_seconds": eject,
        "eject_max_seconds": eject_max,
        "failover_on_busy": _bool(raw, f"{where}.failover_on_busy", True),
    }


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


def _check_url(url: str, name: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {redact_url(url)!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}: {redact_url(url)!r} must not carry a query or fragment")


def _table(raw: Mapping[str, Any], name: str) -> dict:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _reject_unknown(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key} is not a known setting (known: {', '.join(sorted(allowed))})")


def _leaf(name: str) -> str:
    """The key of a dotted setting name ("models[0] (a.b).kind" -> "kind")."""
    return name.rsplit(".", 1)[-1]


def _number(table: Mapping[str, Any], name: str, default: float) -> float:
    value = table.get(_leaf(name), default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name}: {value!r} must be a number >= 0")
    return float(value)


def _int(table: Mapping[str, Any], name: str, default: int, minimum: int = 0) -> int:
    value = table.get(_leaf(name), default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: {value!r} must be a whole number >= {minimum}")
    return value


def _str(table: Mapping[str, Any], name: str, default: str) -> str:
    value = table.get(_leaf(name), default)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: {value!r} must be a string")
    return value


def _bool(table: Mapping[str, Any], name: str, default: bool) -> bool:
    value = table.get(_leaf(name), default)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} must be true or false")
    return value
