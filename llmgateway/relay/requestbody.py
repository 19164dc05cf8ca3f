"""What the gateway reads of a `/v1` request body, without building its prompt.

The request path needs a handful of top-level members (the model, whether it streams, the
token limits) and only the size and shape of the prompt. msgspec reads those members into
Python and keeps `messages`, `prompt` and `input` as the raw JSON bytes it checked, so a 216 KB
prompt costs a scan (about 50 µs) instead of a parse that builds every string (about 170 µs
with orjson). The whole body is still checked as JSON, at the same strictness as `load_json`
(no NaN, no lone surrogates, valid UTF-8), and member names are read unescaped with the last
duplicate winning, as orjson and the upstreams' parsers read them, so what the gateway checks
is what the upstream reads.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ..errors import bad_request
from ..jsonbody import NOT_JSON, TOO_DEEP

ABSENT = msgspec.UNSET
NOT_OBJECT = "The request body must be a JSON object."
_EMPTY = re.compile(rb'""|\[[ \t\r\n]*\]')
_KIND_BY_FIRST_BYTE = {ord("["): list, ord('"'): str}


class _Members(msgspec.Struct):
    """The members read; any other is skipped (checked, never built)."""

    model: Any = ABSENT
    stream: Any = ABSENT
    stream_options: Any = ABSENT
    max_tokens: Any = ABSENT
    max_completion_tokens: Any = ABSENT
    n: Any = ABSENT
    messages: msgspec.Raw = msgspec.Raw()
    prompt: msgspec.Raw = msgspec.Raw()
    input: msgspec.Raw = msgspec.Raw()


_DECODER = msgspec.json.Decoder(_Members)


class RequestBody:
    """The members a call is checked, limited and routed on, and its prompt as raw JSON bytes."""

    __slots__ = ("members", "size")

    def __init__(self, members: _Members, size: int) -> None:
        self.members = members
        self.size = size

    def get(self, name: str) -> Any:
        """A read member's value, None when the body has none (or it is null)."""
        value = getattr(self.members, name)
        return None if value is ABSENT else value

    def has(self, name: str) -> bool:
        """Whether the body has the member under any spelling of its name, null included."""
        return getattr(self.members, name) is not ABSENT

    def prompt_size(self, name: str) -> int:
        """The bytes of a prompt member's JSON (`messages`, `prompt` or `input`; 0 when there is
        none), or of the whole body when `name` is empty."""
        return len(getattr(self.members, name)) if name else self.size

    def prompt_is(self, name: str, kinds: tuple[type, ...]) -> bool:
        """Whether a prompt member is there, of one of `kinds` (list or str), and not empty; told
        from its JSON's first bytes, which the decoder has checked."""
        raw = memoryview(getattr(self.members, name))
        if not raw:
            return False
        kind = _KIND_BY_FIRST_BYTE.get(raw[0])
        return kind in kinds and not _EMPTY.match(raw)


def read_body(raw: bytes) -> RequestBody:
    """`raw` (without a byte order mark) read as a JSON object, or a 400 saying what is wrong.

    msgspec does not check the UTF-8 of what it skips, and a server that read an invalid or
    overlong sequence leniently could see other members than the gateway checked; a body with
    any non-ASCII byte is decoded once to check it (about 10 µs for 216 KB)."""
    if not raw:
        raise bad_request(NOT_OBJECT)
    try:
        if not raw.isascii():
            raw.decode()
        members = _DECODER.decode(raw)
    except UnicodeDecodeError:
        raise bad_request(NOT_JSON) from None
    except RecursionError:
        raise bad_request(TOO_DEEP) from None
    except msgspec.ValidationError:
        raise bad_request(NOT_OBJECT) from None
    except msgspec.DecodeError:
        raise bad_request(NOT_JSON) from None
    return RequestBody(members, len(raw))
