"""The endpoint registry: which `/v1` paths the gateway relays, and what it knows about each.

The upstream URL is built from the `Endpoint` found here, never from the path the client sent.
A raw path is accepted only in canonical form (plain segments of unreserved characters, no dot
segments, no percent-encoding, no empty segments): anything a server or libcurl could read
differently from us (`%2e%2e`, `./`, an encoded `/`, `?` or `#`, double encoding) is refused
before it reaches an upstream, so a key limited to one model cannot reach another model's path,
and a chat call cannot be spelled so that it escapes being metered as chat.

Each known endpoint says where its prompt is, whether a stream can be asked for its usage chunk
(`stream_options.include_usage`), whether it produces completion tokens (which limits reserve),
and how its tokens are counted when the upstream reports none. Canonical paths not listed are
relayed as `OTHER` endpoints: metered from the upstream's usage if it sends one, else estimated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import GatewayError, bad_request
from ..relay.requestbody import RequestBody

MAX_PATH = 200
MAX_SEGMENTS = 8
SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")
MESSAGES, TEXTS, BODY = "messages", "texts", "body"


@dataclass(frozen=True)
class Endpoint:
    """One relayed endpoint: its canonical path and how the gateway meters and limits it."""

    path: str
    prompt_field: str = ""
    prompt_types: tuple[type, ...] = ()
    usage_in_stream: bool = False
    completes: bool = True
    counting: str = BODY

    def require_prompt(self, body: RequestBody) -> None:
        """A 400 naming the field when the prompt the endpoint needs is missing, empty or of the wrong type."""
        if self.prompt_types and not body.prompt_is(self.prompt_field, self.prompt_types):
            raise bad_request(f"'{self.prompt_field}' is required and must not be empty.", self.prompt_field)


CHAT = Endpoint("/v1/chat/completions", "messages", (list,), usage_in_stream=True, counting=MESSAGES)
COMPLETIONS = Endpoint("/v1/completions", "prompt", (str, list), usage_in_stream=True, counting=TEXTS)
EMBEDDINGS = Endpoint("/v1/embeddings", "input", (str, list), completes=False, counting=TEXTS)
# The Responses API puts usage in its final `response.completed` event by itself.
RESPONSES = Endpoint("/v1/responses", "input", (str, list))

KNOWN = {e.path: e for e in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)}


def unknown_path(path: str) -> GatewayError:
    return GatewayError(404, f"Unknown path {path[:MAX_PATH]!r}.", "invalid_request_error", "unknown_path")


def canonical(raw_path: str) -> str:
    """`raw_path` (as on the request line, before any decoding) if it is canonical, else a 400."""
    if len(raw_path) > MAX_PATH:
        raise bad_request(f"The path is longer than {MAX_PATH} characters.")
    segments = raw_path.split("/")[1:]
    if len(segments) > MAX_SEGMENTS:
        raise bad_request(f"The path has more than {MAX_SEGMENTS} segments.")
    for segment in segments:
        if not SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise bad_request("The path must be plain: segments of letters, digits and . _ ~ -, with no "
                              "percent-encoding, no '.' or '..' segments and no empty segments.")
    return raw_path


def resolve(raw_path: str) -> Endpoint:
    """The endpoint a POST to `raw_path` is relayed to: a known one, else a canonical other path."""
    known = KNOWN.get(raw_path)
    if known is not None:
        return known
    if not raw_path.startswith("/v1/"):
        raise unknown_path(raw_path)
    return Endpoint(canonical(raw_path))
