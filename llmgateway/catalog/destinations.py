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
are not resolved, so a list entry means exactly the name the operator wrote.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..config import Config, ConfigError, ModelConfig

ANY_HOST = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
REFUSED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",      # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata (169.254.169.254)
    "fe80::/10",           # IPv6 link-local
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "fd00:ec2::254/128",   # AWS metadata over IPv6
    "0.0.0.0/8",           # "this network": reaches the local host on Linux
))
REFUSED_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.tencentyun.com", "metadata.platformequinix.com",
})
IPV4_SHORTHAND = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def endpoint(url: str) -> str:
    """`host:port` of an http(s) URL, lowercase, IPv6 in brackets, the scheme's port if none."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal stands for, in the spellings curl accepts, else None (a name)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not IPV4_SHORTHAND.match(host):
            return None
        try:
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refused_reason(url: str) -> str:
    """Why no request may ever go to this URL's host ('' if it may)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in REFUSED_NAMES:
        return f"{host} is a cloud metadata service"
    address = _address(host)
    if address is not None and any(address in network for network in REFUSED_NETWORKS):
        return f"{host} is a link-local or cloud metadata address"
    return ""


def parse_host_entry(entry: object, setting: str, allow_any: bool) -> str:
    """One entry of a host list as `host:port` (or `host` for any port, or `*`); a ConfigError if bad."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{setting}: {entry!r} must be a host name or address, optionally with :port")
    entry = entry.strip().lower()
    if entry == ANY_HOST:
        if not allow_any:
            raise ConfigError(f"{setting}: '*' is not allowed here: name the hosts a secret may be sent to")
        return entry
    parts = urlsplit(f"http://{entry}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{setting}: {entry!r} has an invalid port") from None
    if not parts.hostname or parts.path or parts.query or parts.username or parts.password:
        raise ConfigError(f"{setting}: {entry!r} must be a host name or address, optionally with :port")
    reason = refused_reason(f"http://{entry}")
    if reason:
        raise ConfigError(f"{setting}: {entry!r} is refused: {reason}")
    host = parts.hostname.rstrip(".")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


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


def check_config(config: Config) -> None:
    """Every variable `admin.model_secret_envs` offers to API models must be bound to some host."""
    for env_var in config.admin.model_secret_envs:
        if not secret_hosts(config, env_var):
            raise ConfigError(f"admin.model_secret_envs: {env_var} is bound to no host: no configured model uses it, "
                              f"so list where it may be sent in admin.secret_hosts.{env_var}")


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
