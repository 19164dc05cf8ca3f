"""Host entries of `admin.model_hosts` and `admin.secret_hosts`, and the hosts no call may ever reach.

They live with the settings because the settings are checked against them at start; the
catalog's destination rules (`catalog.destinations`) build on them for models added at run time.
Link-local and cloud metadata addresses are refused whatever the lists say, in every spelling
curl would accept (`169.254.169.254`, `2852039166`, `0xa9fea9fe`, `[::ffff:169.254.169.254]`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

ANY_HOST = "*"
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


def host_entry(entry: object, allow_any: bool) -> str:
    """One entry of a host list as `host:port` (or `host` for any port, or `*`).

    Raises ValueError with what is wrong; the caller names the setting."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"{entry!r} must be a host name or address, optionally with :port")
    entry = entry.strip().lower()
    if entry == ANY_HOST:
        if not allow_any:
            raise ValueError("'*' is not allowed here: name the hosts a secret may be sent to")
        return entry
    parts = urlsplit(f"http://{entry}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{entry!r} has an invalid port") from None
    if not parts.hostname or parts.path or parts.query or parts.username or parts.password:
        raise ValueError(f"{entry!r} must be a host name or address, optionally with :port")
    reason = refused_reason(f"http://{entry}")
    if reason:
        raise ValueError(f"{entry!r} is refused: {reason}")
    host = parts.hostname.rstrip(".")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host
