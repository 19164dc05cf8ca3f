"""Counting tokens when the upstream did not report usage, off the hot path.

Order of truth: the upstream's own usage; else its tokenizer — vLLM's `/tokenize`
(which applies the chat template to `messages`, so chat prompts count exactly) or
llama-cpp-python's `/extras/tokenize/count`; for a chat prompt on a server whose tokenizer cannot
apply the template, a one-token non-streaming probe of the same messages, whose `usage` gives the
prompt count exactly (a server whose probe answers without usage is not probed again for
`RELEARN_AFTER`: it would only be sent the whole prompt again); else an estimate (a quarter of
the prompt's JSON bytes, four characters per token of the completion), stored as `estimated`.

llama-cpp-python's tokenizer adds a BOS token to whatever it counts; the counter learns how many
tokens an empty text gives and takes them off counts of generated text.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..catalog.endpoints import MESSAGES, TEXTS, Endpoint
from ..relay.requestbody import RequestBody

PostJson = Callable[[str, Any, str], Awaitable[tuple[int, Any]]]

VLLM, LLAMACPP, NONE = "vllm", "llamacpp", "none"
RELEARN_AFTER = 600.0
MAX_TEXTS = 64
# Bytes of request body that counts in progress may hold at once, each its call's prompt while it
# waits its turn and for a quiet upstream: past this, a call's usage is estimated (and flagged) at
# once, so an upstream that is never quiet under load cannot make the gateway hold every prompt
# it relayed. 1,000 counts of 216 KB prompts fit.
MAX_PENDING_BYTES = 256 << 20
# One count at a time per upstream: a single-slot server would stop one of our calls for the
# next, and a waiting count holds only its call's payload, parsed when its turn comes.
TURN_WAIT_SECONDS = 60.0


def estimate(text: str) -> int:
    """A rough count (about four characters per token) for when no tokenizer answers."""
    return math.ceil(len(text) / 4) if text else 0


def estimate_prompt(endpoint: Endpoint, body: RequestBody) -> int:
    """The prompt's estimated tokens: a quarter of the bytes of its JSON, which the body's read
    has at hand (an unlisted endpoint's `input`, else its `messages`). Member names and quotes
    count too, about as many tokens as a chat template adds around each message."""
    if endpoint.prompt_field:
        size = body.prompt_size(endpoint.prompt_field)
    else:
        size = body.prompt_size("input") or body.prompt_size("messages")
    return math.ceil(size / 4)


@dataclass(frozen=True)
class Prompt:
    """A call's prompt as counting needs it: its estimate, taken when the body was read, and the body,
    parsed again (`load`) only when a tokenizer is to be sent it."""

    estimate: int
    load: Callable[[], dict]


def estimate_usage(prompt: Prompt, completion_text: str) -> tuple[int, int, bool]:
    """(prompt, completion, True): the estimate used when no tokenizer could be asked."""
    return prompt.estimate, estimate(completion_text), True


def _count(status: int, obj: Any) -> int | None:
    """The `count` of a tokenize answer, or None if it is not one."""
    if status == 200 and isinstance(obj, dict) and isinstance(obj.get("count"), int):
        return obj["count"]
    return None


def prompt_texts(endpoint: Endpoint, body: dict) -> list[str]:
    """The prompt as a list of texts, for endpoints whose prompt is plain text."""
    value = body.get(endpoint.prompt_field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return []


class Busy(Exception):
    """The upstream stayed busy with user calls: counting gives up and the event is estimated."""


@dataclass(frozen=True)
class Target:
    """The upstream a count is asked of, and how to ask it.

    `quiet` is awaited before every request: on a single-slot server (llama-cpp-python) any
    request that arrives while a user's stream is generating stops that stream, so the counter
    waits for a moment with none in flight, again before each of its requests."""

    base_url: str
    secret: str
    model: str
    quiet: Callable[[], Awaitable[bool]] | None = None


class TokenCounter:
    """Learns which tokenize endpoint each upstream has and uses it to count."""

    def __init__(self, post_json: PostJson) -> None:
        self.post_json = post_json
        self._styles: dict[str, tuple[str, float]] = {}
        self._bos: dict[str, int] = {}
        self._probe_useless: dict[str, float] = {}
        self._turns: dict[str, asyncio.Semaphore] = {}
        self.pending_bytes = 0

    async def count(self, target: Target, endpoint: Endpoint, prompt: Prompt, completion_text: str,
                    probe: bool, size: int = 0) -> tuple[int, int, bool]:
        """(prompt_tokens, completion_tokens, estimated) for a body of `size` bytes; estimated at
        once when the counts in progress hold `MAX_PENDING_BYTES` already, and when the turn does
        not come in `TURN_WAIT_SECONDS`."""
        if self.pending_bytes and self.pending_bytes + size > MAX_PENDING_BYTES:
            return estimate_usage(prompt, completion_text)
        self.pending_bytes += size
        turn = self._turns.setdefault(target.base_url, asyncio.Semaphore(1))
        try:
            await asyncio.wait_for(turn.acquire(), TURN_WAIT_SECONDS)
        except TimeoutError:
            self.pending_bytes -= size
            return estimate_usage(prompt, completion_text)
        try:
            return await self._count(target, endpoint, prompt, completion_text, probe)
        except Busy:
            return estimate_usage(prompt, completion_text)
        finally:
            turn.release()
            self.pending_bytes -= size

    async def _count(self, target: Target, endpoint: Endpoint, prompt: Prompt, completion_text: str,
                     probe: bool) -> tuple[int, int, bool]:
        counted_prompt: int | None = None
        if endpoint.counting == MESSAGES:
            counted_prompt = await self._chat_prompt(target, prompt, probe)
        elif endpoint.counting == TEXTS:
            counted_prompt = await self._count_texts(target, prompt_texts(endpoint, prompt.load()), special=True)
        estimated = counted_prompt is None
        completion = 0
        if completion_text:
            counted = await self._count_texts(target, [completion_text], special=False)
            if counted is None:
                counted, estimated = estimate(completion_text), True
            completion = counted
        return prompt.estimate if counted_prompt is None else counted_prompt, completion, estimated

    async def _post(self, target: Target, path: str, obj: Any) -> tuple[int, Any]:
        if target.quiet is not None and not await target.quiet():
            raise Busy
        return await self.post_json(target.base_url + path, obj, target.secret)

    async def _style(self, target: Target) -> str:
        base_url = target.base_url
        known = self._styles.get(base_url)
        if known and (known[0] != NONE or time.monotonic() - known[1] < RELEARN_AFTER):
            return known[0]
        style = NONE
        if _count(*await self._post(target, "/tokenize", {"model": target.model, "prompt": "a"})) is not None:
            style = VLLM
        else:
            bos = _count(*await self._post(target, "/extras/tokenize/count", {"input": ""}))
            if bos is not None:
                style = LLAMACPP
                self._bos[base_url] = bos
        self._styles[base_url] = (style, time.monotonic())
        return style

    async def _count_one(self, target: Target, text: str, special: bool) -> int | None:
        style = await self._style(target)
        if style == VLLM:
            req = {"model": target.model, "prompt": text, "add_special_tokens": special}
            return _count(*await self._post(target, "/tokenize", req))
        if style == LLAMACPP:
            counted = _count(*await self._post(target, "/extras/tokenize/count", {"input": text}))
            if counted is not None and not special:
                # llama-cpp-python adds BOS to every count (for models that have one); generated
                # text has none, so take it off again.
                return max(counted - self._bos.get(target.base_url, 0), 0)
            return counted
        return None

    async def _count_texts(self, target: Target, texts: list[str], special: bool) -> int | None:
        if not texts or len(texts) > MAX_TEXTS:
            return None if texts else 0
        total = 0
        for text in texts:
            counted = await self._count_one(target, text, special)
            if counted is None:
                return None
            total += counted
        return total

    async def _chat_prompt(self, target: Target, prompt: Prompt, probe: bool) -> int | None:
        """The chat prompt's count; the body is parsed again only if a tokenizer or a probe will
        be sent it (not for a server that has neither)."""
        style = await self._style(target)
        useless_since = self._probe_useless.get(target.base_url)
        probe = probe and (useless_since is None or time.monotonic() - useless_since >= RELEARN_AFTER)
        if style != VLLM and not probe:
            return None
        body = prompt.load()
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        if style == VLLM:
            counted = _count(*await self._post(target, "/tokenize", {"model": target.model, "messages": messages}))
            if counted is not None:
                return counted
        if not probe:
            return None
        probe_body = {"model": target.model, "messages": messages, "max_tokens": 1, "stream": False}
        for field in ("tools", "tool_choice", "response_format"):
            if field in body:
                probe_body[field] = body[field]
        status, obj = await self._post(target, "/v1/chat/completions", probe_body)
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if status == 200 and isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            return usage["prompt_tokens"]
        if status == 200:
            # It answered without a count (a server that reports no usage at all): sending it every
            # prompt again would buy nothing; asked again after RELEARN_AFTER.
            self._probe_useless[target.base_url] = time.monotonic()
        return None
