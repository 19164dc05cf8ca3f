"""JSON request bodies, read and written the same way on every door.

Parsed and written with orjson (a fraction of the standard library's cost on large prompts).
Invalid JSON and JSON nested too deeply both get a 400; orjson stops at 1024 levels with a
`JSONDecodeError` of its own, which is told apart so the client hears which one it was. orjson
is stricter than the standard library where JSON is: no NaN or Infinity, no lone surrogates, no
UTF-16 or UTF-32 bodies. A UTF-8 byte order mark, which RFC 8259 lets a parser ignore, is.
`/v1` bodies are read by `requestbody` instead, to the same rules and with the same errors.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .errors import bad_request

TOO_DEEP = "The JSON body is nested too deeply."
NOT_JSON = "We could not parse the JSON body of your request: it is not valid JSON."
BOM = b"\xef\xbb\xbf"
_SPACES = re.compile(rb"[ \t\r\n]*")


def strip_bom(raw: bytes) -> bytes:
    """`raw` without a leading UTF-8 byte order mark (a copy only when there is one)."""
    return raw[len(BOM):] if raw.startswith(BOM) else raw


def load_json(raw: bytes, empty: Any = None) -> Any:
    """The parsed body (`empty` for no body), or a 400."""
    if not raw:
        return empty
    try:
        return orjson.loads(strip_bom(raw))
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("array and object recursion depth exceeded"):
            raise bad_request(TOO_DEEP) from None
        raise bad_request(NOT_JSON) from None


def encode_body(obj: Any) -> bytes:
    """`obj` as compact JSON bytes, or a 400 if it cannot be written again (nested more deeply
    than orjson writes, or an integer beyond 64 bits, which only arrives as a float anyway)."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        raise bad_request(TOO_DEEP) from None


def prepend_member(raw: bytes, name: str, value: Any) -> bytes:
    """`raw`, a non-empty JSON object the caller has read and found without the member `name` under any
    spelling, with `"name": value` as its first member: the cost of a copy, where writing the
    body again costs as much as the prompt is long (3 µs against 50 µs for 216 KB of code). The
    new member duplicates nothing, so every parser reads the same body."""
    start = _SPACES.match(raw).end() + 1
    member = orjson.dumps(name) + b":" + orjson.dumps(value) + b","
    return b"".join((memoryview(raw)[:start], member, memoryview(raw)[start:]))
