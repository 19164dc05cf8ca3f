"""Where upstream secrets and API models' calls may go: the operator decides, never an admin.

A model added through the admin API names its upstream URLs, so without a rule an admin (or a
stolen admin token) could point a model at a host of their own and receive an upstream secret
with the first call, or at an address inside the cluster and read the answers. Two lists close
that: `admin.model_hosts` says which hosts API models may call (by default the hosts of the
configured models), and `admin.secret_hosts` binds each secret variable to the hosts it may be
sent to (always including the hosts of configured models that use it). Link-local and cloud
metadata addresses are refused whatever the lists say, in every spelling curl would accept
(`169.254.169.254`, `2852039166`, `0xa9fea9fe`, `[::ffff:169.254.169.254]`).

Hosts are compared as written in the URL (lowercase, with the port the scheme implies): names
are not resolved, so a list entry means exactly the name the operator wrote. The list entries
and the refused hosts are the settings' own (`config.hosts`); at start the settings also check
that every secret offered to API models is bound to some host.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from ..config import Config, ModelConfig
from ..config.hosts import ANY_HOST, refused_reason

DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint(url: str) -> str:
    """`host:port` of an http(s) URL, lowercase, IPv6 in brackets, the scheme's port if none."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _matches(entries: Iterable[str], url: str) -> bool:
    target = endpoint(url)
    host = target.rsplit(":", 1)[0]
    return any(e in (ANY_HOST, target, host) for e in entries)


def model_hosts(config: Config) -> tuple[str, ...]:
    """The hosts API models may call: `admin.model_hosts`, else the configured models' hosts and
    `upstream.default_url`'s."""
    if config.admin.model_hosts is not None:
        return config.admin.model_hosts
    hosts = {endpoint(u.url) for m in config.models for u in m.upstreams}
    if config.upstream.default_url:
        hosts.add(endpoint(config.upstream.default_url))
    return tuple(sorted(hosts))


def secret_hosts(config: Config, env_var: str) -> tuple[str, ...]:
    """The hosts the secret in `env_var` may be sent to: those of configured models that use it,
    plus `admin.secret_hosts[env_var]`."""
    hosts = {endpoint(u.url) for m in config.models if m.api_key_env == env_var for u in m.upstreams}
    hosts.update(config.admin.secret_hosts.get(env_var, ()))
    return tuple(sorted(hosts))


def check_api_model(model: ModelConfig, config: Config) -> tuple[str, str]:
    """('', '') if an API model's calls and secret go only where the operator allows, else
    (field, reason)."""
    allowed = model_hosts(config)
    for upstream in model.upstreams:
        reason = refused_reason(upstream.url)
        if reason:
            return "upstreams", f"upstreams: {reason}; the gateway never sends requests there"
        if not _matches(allowed, upstream.url):
            return "upstreams", (f"upstreams: {endpoint(upstream.url)} is not a host models may use "
                                 f"(admin.model_hosts: {', '.join(allowed) or 'none'})")
    if model.api_key_env:
        bound = secret_hosts(config, model.api_key_env)
        for upstream in model.upstreams:
            if not _matches(bound, upstream.url):
                return "api_key_env", (f"api_key_env: the secret in {model.api_key_env} may only be sent to "
                                       f"{', '.join(bound) or 'no host'} (admin.secret_hosts), not to "
                                       f"{endpoint(upstream.url)}")
    return "", ""
