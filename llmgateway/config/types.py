"""Reusable setting types: what a value may be, how a wrong one is refused, how the docs name it.

Each type is an `Annotated` pydantic type whose validator keeps the file's lax rules: numeric
strings count as numbers (environment overrides are strings), "true"/"false"/"1"/"0" as
booleans, and a boolean is never a number (pydantic's own lax mode would take `true` for 1 and
word its own messages). A refusal says only what is wrong; `load` puts the setting's name first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from ..redact import redact_url
from .hosts import host_entry


def refusal(message: str, *, bare: bool = False, key: str = "", whole: bool = False) -> PydanticCustomError:
    """A validation error `load` turns into one message: "<setting>: <message>", "<setting> <message>"
    when `bare`, with `.key` after the setting for an entry of a table, or `message` alone when `whole`."""
    return PydanticCustomError("setting", "{message}", {"message": message, "bare": bare, "key": key, "whole": whole})


@dataclass(frozen=True)
class Allowed:
    """What a setting accepts, as the README's tables say it."""

    text: str


def checked(base: Any, check: Callable[[Any], Any], allowed: str) -> Any:
    """`base`, as `check` makes it from the file's value (or refuses it); `allowed` is for the docs."""
    return Annotated[base, BeforeValidator(check), Allowed(allowed)]


def as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise refusal(f"{value!r} must be a string")
    return value


def as_number(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise refusal(f"{value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise refusal(f"{value!r} must be a number >= 0")
    return float(value)


def as_bool(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise refusal(f"{value!r} must be true or false")
    return value


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refusal(f"{redact_url(url)!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise refusal(f"{redact_url(url)!r} must not carry a query or fragment")
    return url


def parse_listen(value: Any) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:8000")."""
    if not isinstance(value, str) or ":" not in value:
        raise refusal(f"{value!r} is not host:port")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise refusal(f"port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535 or not host:
        raise refusal(f"{value!r} is not host:port")
    return host, port


def _listen(value: Any) -> str:
    parse_listen(value)
    return value


def _optional_listen(value: Any) -> str:
    return as_text(value) and _listen(value)


Text = checked(str, as_text, "text")
Number = checked(float, as_number, "number >= 0")
Bool = checked(bool, as_bool, "true or false")
Listen = checked(str, _listen, "`host:port`")
OptionalListen = checked(str, _optional_listen, '`host:port`, or "" for none')


def number_where(ok: Callable[[float], bool], message: str, allowed: str, bare: bool = False) -> Any:
    """A number >= 0 with a further bound; `message` may quote the number as {value!r}."""
    def check(value: Any) -> float:
        number = as_number(value)
        if not ok(number):
            raise refusal(message.format(value=number), bare=bare)
        return number
    return checked(float, check, allowed)


def at_least_one(value: Any) -> float:
    """Below 1 counts as 1: an interval of 0 would spin."""
    return max(1.0, as_number(value))


Interval = checked(float, at_least_one, "number; below 1 counts as 1")


def whole_number(minimum: int, at_most: int = 0) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise refusal(f"{value!r} must be a whole number >= {minimum}")
        if at_most and value > at_most:
            raise refusal(f"must be at most {at_most}", bare=True)
        return value
    return checked(int, check, f"whole number {minimum}..{at_most}" if at_most else f"whole number >= {minimum}")


def text_where(ok: Callable[[str], bool], message: str, allowed: str, bare: bool = False,
               clean: Callable[[str], str] = str) -> Any:
    """A string, cleaned (e.g. stripped) and then checked; `message` may quote it as {value!r}."""
    def check(value: Any) -> str:
        text = clean(as_text(value))
        if not ok(text):
            raise refusal(message.format(value=text), bare=bare)
        return text
    return checked(str, check, allowed)


def one_of(choices: tuple[str, ...], message: str, bare: bool = False, text_first: bool = True) -> Any:
    """One of `choices`; `message` may quote the value as {value!r}."""
    def check(value: Any) -> str:
        if text_first:
            as_text(value)
        if value not in choices:
            raise refusal(message.format(value=value), bare=bare)
        return value
    return checked(str, check, " or ".join(f"`{c}`" for c in choices))


def _http_url(value: Any) -> str:
    url = as_text(value).rstrip("/")
    return check_url(url) if url else url


def _any_http_url(value: Any) -> str:
    url = str(value).rstrip("/")
    return check_url(url) if url else url


def _http_url_as_is(value: Any) -> str:
    url = as_text(value)
    return check_url(url) if url else url


HttpUrl = checked(str, _http_url, 'http(s) URL, or ""')
LooseHttpUrl = checked(str, _any_http_url, 'http(s) URL, or ""')
"""`upstream.default_url` takes whatever it is given as text, as the environment does."""
MetadataUrl = checked(str, _http_url_as_is, 'http(s) URL, or ""')


def text_list(message: str) -> Any:
    """A list of non-empty strings, kept as a tuple; `message` may quote the value as {value!r}."""
    def check(value: Any) -> tuple[str, ...]:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise refusal(message.format(value=value))
        return tuple(value)
    return checked(tuple[str, ...], check, "list of non-empty strings")


def _host_list(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise refusal(f"{value!r} must be a list of hosts (host or host:port, or '*')")
    try:
        return tuple(host_entry(h, allow_any=True) for h in value)
    except ValueError as exc:
        raise refusal(str(exc)) from None


def _secret_hosts(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise refusal('must be a table: VARIABLE = ["host", "host:port", ...]', bare=True)
    bound = {}
    for env_var, hosts in value.items():
        if isinstance(hosts, tuple):
            hosts = list(hosts)
        if not isinstance(hosts, list) or not hosts:
            raise refusal(f"{hosts!r} must be a non-empty list of hosts (host or host:port)", key=env_var)
        try:
            bound[env_var] = tuple(host_entry(h, allow_any=False) for h in hosts)
        except ValueError as exc:
            raise refusal(str(exc), key=env_var) from None
    return bound


HostList = checked(tuple[str, ...] | None, _host_list, 'list of `"host"`, `"host:port"` or `"*"`')
SecretHosts = checked(dict[str, tuple[str, ...]], _secret_hosts, 'table: VARIABLE = ["host", "host:port", ...]')


def limit_table(names: tuple[str, ...]) -> Any:
    """A table of limits by name, each a number >= 0 (0 = none)."""
    def check(value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            raise refusal("must be a table of limits", bare=True)
        limits = {}
        for name, limit in value.items():
            if name not in names:
                raise refusal(f"is not a known setting (known: {', '.join(sorted(names))})", bare=True, key=name)
            try:
                limits[name] = as_number(limit)
            except PydanticCustomError as exc:
                raise refusal(exc.context["message"], key=name) from None
        return limits
    return checked(dict[str, float], check, "table of " + ", ".join(f"`{n}`" for n in names))
