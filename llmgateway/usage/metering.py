"""Reading token usage out of what the upstream sends, without slowing the relay.

`StreamMeter` watches an SSE stream as it passes: it finds the usage object (the final usage
chunk the gateway asked for with `stream_options.include_usage`), drops that chunk again when the
client did not ask for it, and keeps the produced text so that a stream without usage (as
llama-cpp-python sends) can still be counted exactly by the upstream's tokenizer afterwards.
Events can be split across network chunks, so parsing is incremental.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

COMPACT_AT = 1 << 20
USAGE_MARK = b'"usage"'
NULL_USAGE, NULL_USAGE_SPACED = b'"usage":null', b'"usage": null'
DONE = b"[DONE]"
DONE_MARKS = (b"data: [DONE]", b"data:[DONE]")
LINE_DONE, LINE_DONE_UNSPACED = (b"\n" + m for m in DONE_MARKS)
EVENT_ENDS = (b"\n\n", b"\r\n\r\n")


def normalise_usage(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) from an OpenAI usage object (chat, completions, embeddings or responses)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int) or isinstance(prompt, bool):
        return None
    return prompt, completion


def find_usage(obj: Any) -> tuple[int, int] | None:
    """Usage in a response body or stream event (responses API nests it under `response`)."""
    if not isinstance(obj, dict):
        return None
    found = normalise_usage(obj.get("usage"))
    if found is None and isinstance(obj.get("response"), dict):
        found = normalise_usage(obj["response"].get("usage"))
    return found


def choice_text(obj: Any) -> str:
    """The generated text in a body or a chunk: message/delta content, reasoning, tool arguments."""
    if not isinstance(obj, dict):
        return ""
    parts: list[str] = []
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("text"), str):
                parts.append(choice["text"])
            for msg_key in ("delta", "message"):
                msg = choice.get(msg_key)
                if isinstance(msg, dict):
                    _message_text(msg, parts)
    elif obj.get("type") == "response.output_text.delta" and isinstance(obj.get("delta"), str):
        parts.append(obj["delta"])
    return "".join(parts)


def _message_text(msg: dict, parts: list[str]) -> None:
    for field in ("content", "reasoning_content", "reasoning"):
        if isinstance(msg.get(field), str):
            parts.append(msg[field])
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                parts.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))


def _event_json(event: bytes) -> Any:
    """The JSON of an SSE event's data lines, or None (comments, [DONE], non-JSON).

    Read with orjson, a fifth of the standard library's cost per chunk; what orjson refuses
    (NaN, lone surrogates, UTF-16) is read by the standard library, as before. orjson reads an
    integer past 64 bits as a float, so a usage object with one is not taken (no count is that
    large) and the stream is counted as one without usage."""
    if event.startswith(b"data:") and b"\n" not in event and b"\r" not in event:
        payload = event[5:].strip()
    else:
        data = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
        if not data:
            return None
        payload = b"\n".join(data)
    if payload == b"[DONE]":
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(payload)
    except ValueError:
        return None


class StreamMeter:
    """Incremental SSE watcher for one stream; see the module docstring."""

    def __init__(self, strip_usage_chunk: bool, whole_events: bool = False) -> None:
        """`whole_events`: relay only complete events (as stripping does), so that a rewrite of
        the relayed bytes never meets half of what it looks for."""
        self.strip_usage_chunk = strip_usage_chunk
        self.hold = strip_usage_chunk or whole_events
        self.usage: tuple[int, int] | None = None
        self.done = False
        self._tail = b""
        self._raw: list[bytes] = []
        self._raw_size = 0
        self._text: list[str] = []

    def feed(self, data: bytes) -> bytes:
        """Take bytes from upstream; return the bytes to relay to the client now.

        Called for every chunk of every stream, so the usual case (whole events, no usage, no
        `[DONE]`) costs a few byte searches and no copy."""
        buf = self._tail + data if self._tail else data
        if buf.endswith(EVENT_ENDS):
            complete, self._tail = buf, b""
        else:
            cut = max(buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n"))
            if cut < 0:
                self._tail = buf
                return b"" if self.hold else data
            end = cut + (4 if buf.startswith(b"\r\n\r\n", cut) else 2)
            complete, self._tail = buf[:end], buf[end:]
        kept = self._scan(complete)
        return kept if self.hold else data

    def finish(self) -> bytes:
        """The end of the stream: scan what was held back; return what is still to relay."""
        tail, self._tail = self._tail, b""
        self._see_done(tail)
        if not tail.strip():
            return tail if self.hold else b""
        keep = self._scan_event(tail)
        return tail if keep and self.hold else b""

    def _see_done(self, block: bytes) -> None:
        """Note the stream's `data: [DONE]`: only at the start of a line, where no JSON string
        (which cannot hold a raw newline) can put it."""
        if block.startswith(DONE_MARKS) or LINE_DONE in block or LINE_DONE_UNSPACED in block:
            self.done = True

    def _scan(self, block: bytes) -> bytes:
        """Look at each complete event in `block`; return the block minus a stripped usage chunk."""
        if DONE in block:
            self._see_done(block)
        marks = block.count(USAGE_MARK)
        if not marks or marks == block.count(NULL_USAGE) + block.count(NULL_USAGE_SPACED):
            self._keep_raw(block)
            return block
        sep = b"\r\n\r\n" if b"\r\n\r\n" in block else b"\n\n"
        events = block.split(sep)
        kept = [event + sep for event in events[:-1] if self._scan_event(event)]
        return b"".join(kept) + events[-1]

    def _scan_event(self, event: bytes) -> bool:
        """Record usage or text from one event; False if it is the usage chunk to strip."""
        if USAGE_MARK not in event or NULL_USAGE in event or NULL_USAGE_SPACED in event:
            self._keep_raw(event)
            return True
        obj = _event_json(event)
        usage = find_usage(obj)
        if usage is None:
            self._keep_raw(event)
            return True
        self.usage = usage
        return not (self.strip_usage_chunk and obj.get("choices") == [])

    def _keep_raw(self, block: bytes) -> None:
        if self.usage is not None:
            return
        self._raw.append(block)
        self._raw_size += len(block)
        if self._raw_size > COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        for block in self._raw:
            for event in block.replace(b"\r\n", b"\n").split(b"\n\n"):
                self._text_from(_event_json(event))
        self._raw = []
        self._raw_size = 0

    def _text_from(self, obj: Any) -> None:
        text = choice_text(obj)
        if text:
            self._text.append(text)

    def completion_text(self) -> str:
        """All generated text seen so far (for counting when the upstream sent no usage)."""
        self._compact()
        return "".join(self._text)
