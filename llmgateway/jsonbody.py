"""JSON request bodies, read and written the same way on every door.

Invalid JSON and JSON nested too deeply both get a 400: the standard library's parser recurses
once per level and raises `RecursionError` (not `ValueError`) past the interpreter's limit,
which would otherwise surface as a 500 with a traceback in the log.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import bad_request

TOO_DEEP = "The JSON body is nested too deeply."


def load_json(raw: bytes, empty: Any = None) -> Any:
    """The parsed body (`empty` for no body), or a 400."""
    if not raw:
        return empty
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad_request(TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError):
        raise bad_request("We could not parse the JSON body of your request: it is not valid JSON.") from None


def encode_body(obj: Any) -> bytes:
    """`obj` as compact JSON bytes, or a 400 if it is nested too deeply to write again."""
    try:
        return json.dumps(obj).encode()
    except RecursionError:
        raise bad_request(TOO_DEEP) from None
