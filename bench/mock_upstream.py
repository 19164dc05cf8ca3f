"""A mock OpenAI-compatible LLM server for the tests and the benchmark.

Run from the repo root: ``python -m bench.mock_upstream --listen 127.0.0.1:0 [options]``. When it
serves it prints one line ``READY <port>`` (the real port) on stdout; SIGTERM or SIGINT stops it.
It is fast on purpose (Tornado's HTTP server without the ``tornado.web`` layer, no access log,
fixed bodies built once, bodies parsed with orjson, the last token counts remembered) so that it
is never the bottleneck of a gateway benchmark, and it sets ``TCP_NODELAY`` on every request, as
uvicorn (under vLLM and llama-cpp-python) does.

Every process-wide option (``--latency-ms``, ``--tokens``, ``--interval-ms``, ``--usage-chunk``,
``--usage-body``, ``--tokenize``, ``--mode``, ``--die-after``, ``--status``, ``--api-key``,
``--name``, ``--linger-ms``) can be overridden for one request by a JSON object ``"mock"`` in its body, with the
same names spelled with underscores: ``{"mock": {"mode": "error500", "interval_ms": 5}}``.
``usage_chunk``/``usage_body`` take ``true``/``false`` or ``"on"``/``"off"``. An unknown name or a
bad value answers 400, so a typo in a test fails loudly.

Deterministic tokenizer, which the gateway's tests rely on:

- ``tokens(text) = len(re.findall(r"\\w+|[^\\w\\s]", text))``.
- Chat prompts are counted on the rendered template
  ``"".join(f"<|{role}|>\\n{content}\\n" for each message) + "<|assistant|>\\n"``; a content given
  as a list of parts uses the texts of its ``{"type": "text"}`` parts joined by ``"\\n"`` (as
  vLLM does); a missing or null content renders as ``""``.
- Completion prompts: ``tokens(prompt)``, summed over a list of strings (a list of token ids
  counts its length). Embedding inputs likewise.
- ``--bos N`` (default 0) imitates llama-cpp-python's BOS token: N more tokens in every prompt's
  usage and in every ``/extras/tokenize/count`` answer, never in the completion.
- The completion text is ``"w0 w1 ... w<N-1>"``, so ``completion_tokens = N``: ``tokens``, capped
  by the request's ``max_tokens`` and ``max_completion_tokens``. ``finish_reason`` is ``"length"``
  when a cap cut it short, else ``"stop"``.
- A stream sends one chunk per word (the first also carries ``"role": "assistant"``, the rest
  have a leading space), ``finish_reason`` on the last content chunk (as vLLM), then, when the
  request has ``stream_options.include_usage`` and ``usage_chunk`` is on, a chunk with
  ``"choices": []`` and the usage (every other chunk then carries ``"usage": null``), then
  ``data: [DONE]``. Headers go out at once; ``latency_ms`` delays the first chunk; ``linger_ms``
  holds the response open that long after ``[DONE]`` before ending it (as a slow upstream may).
- Other ``POST /v1/<path>`` bodies naming a model answer ``object: "mock.passthrough"`` with
  ``prompt_tokens = tokens(json.dumps(body))`` (the body as received) and 2 completion tokens.

Modes apply to ``POST /v1/...`` only; ``GET /v1/models`` and the tokenize endpoints always answer
normally. ``error500``, ``status``, ``bare`` (the status with an empty body, as llama-cpp-python's
server refuses a request) and ``badjson`` answer at once (no latency); ``hang`` drops the
connection unanswered after 120 s; ``die`` cuts a stream after ``die_after`` data events (no
``[DONE]``, no final chunk) and a whole body half-way through a longer promised Content-Length.

The seed layout is served too: ``/<name>/v1/...`` answers as ``/v1/...`` (one prefix segment in
front of ``/v1/``). ``--api-key`` refuses other keys with a 401 quoting part of the key sent, as
hosted services do.

``GET /mock/requests`` (the last 200 requests, oldest first: method, path without a seed prefix,
``raw_path`` as on the request line, headers, parsed body, ``raw``: the body's bytes as text, and
``streams_open``: how many streams were still being sent when it arrived),
``GET /mock/stats`` and ``POST /mock/reset`` are not themselves logged or counted, nor is
``GET /health`` (or ``/<name>/health`` in the seed layout), which answers 200 ``{}`` as vLLM's
does: the gateway's active health checks call it. A stream counts as completed once ``[DONE]``
is sent, as aborted when its client leaves first; a ``die`` stream is neither.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import functools
import itertools
import json
import logging
import re
import struct
import sys
import time
from collections.abc import Coroutine
from typing import Any

import orjson
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from bench.serving import serve_until_signal

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MODES = ("ok", "error500", "badjson", "hang", "die", "status", "bare")
SEED_PREFIX = re.compile(r"/[^/]+(?=/v1/)")
HEALTH = re.compile(r"(/[^/]+)?/health")
TOKENIZERS = ("vllm", "llamacpp", "none")
HANG_SECONDS = 120.0
REQUEST_LOG_SIZE = 200
EMBEDDING_DIM = 8
MAX_MODEL_LEN = 4096
JSON_TYPE = "application/json"
NOT_FOUND = b'{"detail":"Not Found"}'
BAD_JSON = b'{"id": "x", '
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"

log = logging.getLogger("bench.mock_upstream")


@functools.lru_cache(maxsize=64)
def tokens(text: str) -> int:
    """The mock's token count: words and single punctuation marks. Remembered for the last few
    texts: counting a 216 KB prompt takes the mock about 8 ms, which a benchmark repeating one
    large prompt would otherwise measure as the gateway's (it asks for usage; a bare relay not)."""
    return len(TOKEN_RE.findall(text))


def content_text(content: Any) -> str:
    """A message content as text; for a list of parts, its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def render(messages: list) -> str:
    """The chat template the mock 'applies', so that chat prompt counts are exact and checkable."""
    parts = [f"<|{m.get('role', '')}|>\n{content_text(m.get('content'))}\n" for m in messages if isinstance(m, dict)]
    return "".join(parts) + "<|assistant|>\n"


def text_tokens(value: Any) -> int:
    """Tokens of a prompt or input: a string, a list of strings, or token ids."""
    if isinstance(value, str):
        return tokens(value)
    if isinstance(value, list):
        return sum(text_tokens(v) if isinstance(v, str | list) else 1 for v in value)
    return 0


@functools.lru_cache(maxsize=64)
def words(n: int) -> tuple[str, ...]:
    """The completion as stream pieces: "w0", " w1", " w2"..."""
    return tuple(f"w{i}" if i == 0 else f" w{i}" for i in range(n))


@functools.lru_cache(maxsize=64)
def vector(index: int) -> list[float]:
    """A fixed embedding per input position."""
    return [round((index + j + 1) / (EMBEDDING_DIM + index + 1), 6) for j in range(EMBEDDING_DIM)]


def loads(raw: bytes) -> Any:
    """A request body: orjson (a 216 KB prompt in a fifth of the standard library's time, so a
    large-prompt benchmark measures the target, not the mock), the standard library for what
    orjson refuses and it takes (NaN, a byte order mark)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, as servers send them."""
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(status: int, message: str) -> bytes:
    """An OpenAI error body for a status."""
    if status == 429:
        kind, code = "rate_limit_exceeded", "rate_limit_exceeded"
    elif status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    return dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def on_off(value: Any) -> bool:
    """Read an on/off switch given as a flag value or a JSON boolean."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"{value!r} is not on/off")


@dataclasses.dataclass(frozen=True)
class Options:
    """How to answer; process-wide defaults, overridable per request by the body's "mock"."""

    latency_ms: float = 0.0
    tokens: int = 16
    interval_ms: float = 0.0
    usage_chunk: bool = True
    usage_body: bool = True
    tokenize: str = "vllm"
    mode: str = "ok"
    die_after: int = 3
    status: int = 503
    api_key: str | None = None
    name: str = "mock"
    bos: int = 0
    linger_ms: float = 0.0

    def override(self, raw: Any) -> Options:
        """These options changed by a request's "mock" object; ValueError names a bad entry."""
        if not isinstance(raw, dict):
            raise ValueError('"mock" must be an object')
        changes: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in OPTION_NAMES:
                raise ValueError(f"unknown mock option {key!r} (known: {', '.join(sorted(OPTION_NAMES))})")
            changes[key] = check_option(key, value)
        return dataclasses.replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))


def check_option(key: str, value: Any) -> Any:
    """One option value, validated and normalised; ValueError says what is wrong."""
    if key in ("usage_chunk", "usage_body"):
        return on_off(value)
    if key in ("latency_ms", "interval_ms", "linger_ms"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key} must be a number >= 0")
        return float(value)
    if key in ("tokens", "die_after", "bos"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0")
        return value
    if key == "status":
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
            raise ValueError("status must be an HTTP status code")
        return value
    if key == "mode" and value not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if key == "tokenize" and value not in TOKENIZERS:
        raise ValueError(f"tokenize must be one of {', '.join(TOKENIZERS)}")
    if key == "api_key" and value is not None and not isinstance(value, str):
        raise ValueError("api_key must be a string or null")
    if key == "name" and not isinstance(value, str):
        raise ValueError("name must be a string")
    return value


class Stats:
    """What tests read back: a bounded request log and stream counters."""

    def __init__(self) -> None:
        self.log: collections.deque[dict] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        self.reset()

    def reset(self) -> None:
        """Forget everything (POST /mock/reset)."""
        self.log.clear()
        self.requests = self.streams_started = self.streams_completed = self.streams_aborted = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as JSON-ready numbers."""
        return {
            "requests": self.requests,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_aborted": self.streams_aborted,
        }


@dataclasses.dataclass
class Mock:
    """The process-wide state shared by all handlers."""

    options: Options
    models_body: bytes
    default_model: str
    stats: Stats = dataclasses.field(default_factory=Stats)
    ids: itertools.count = dataclasses.field(default_factory=itertools.count)
    tasks: set[asyncio.Task] = dataclasses.field(default_factory=set)


class Exchange(httputil.HTTPMessageDelegate):
    """One request and its answer, on Tornado's HTTP/1.1 connection without RequestHandler.

    Going below `tornado.web` nearly doubles the mock's request rate, which keeps it well ahead of
    the gateway it is compared with.
    """

    def __init__(self, mock: Mock, conn: HTTP1Connection) -> None:
        self.mock = mock
        self.conn = conn
        self.opts = mock.options
        self.method = ""
        self.raw_path = ""
        self.path = ""
        self.headers = httputil.HTTPHeaders()
        self.chunks: list[bytes] = []
        self.body: Any = None
        self.stream_open = False
        self.closed = False
        self.gone: asyncio.Event | None = None
        self.pending: list[bytes] = []

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.method = start_line.method
        self.raw_path = start_line.path
        self.path = SEED_PREFIX.sub("", start_line.path.partition("?")[0], count=1)
        self.headers = headers

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def on_connection_close(self) -> None:
        self.client_gone()

    def finish(self) -> None:
        """The whole request is in: answer it, now or from a task."""
        self.conn.set_close_callback(self.client_gone)
        if self.path.startswith("/mock/"):
            self.control()
        elif self.method == "GET" and HEALTH.fullmatch(self.path):
            self.answer(200, b"{}")
        elif self.start():
            self.route()

    def client_gone(self) -> None:
        """The client closed the connection: count an unfinished stream as aborted (once)."""
        self.closed = True
        if self.gone is not None:
            self.gone.set()
        if self.stream_open:
            self.stream_open = False
            self.mock.stats.streams_aborted += 1

    def answer(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        """Send a whole JSON body."""
        headers = httputil.HTTPHeaders(
            {"Content-Type": JSON_TYPE, "Content-Length": str(len(body)), "x-mock-name": self.opts.name}
        )
        if extra:
            headers.update(extra)
        self.conn.write_headers(start_line(status), headers, body)
        self.conn.finish()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a slow answer as a task, held until done; a crash closes the connection, not the mock."""
        task = asyncio.get_running_loop().create_task(self.guarded(work))
        self.mock.tasks.add(task)
        task.add_done_callback(self.mock.tasks.discard)

    async def guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """Await an answer; a vanished client is expected, anything else is a bug to show."""
        try:
            await work
        except StreamClosedError:
            self.client_gone()
        except Exception:
            log.exception("mock failed on %s %s", self.method, self.path)
            self.conn.close()

    def control(self) -> None:
        """/mock/requests, /mock/stats, /mock/reset: what tests read about the traffic."""
        stats = self.mock.stats
        if self.method == "GET" and self.path == "/mock/requests":
            self.answer(200, dumps(list(stats.log)))
        elif self.method == "GET" and self.path == "/mock/stats":
            self.answer(200, dumps(stats.as_dict()))
        elif self.method == "POST" and self.path == "/mock/reset":
            stats.reset()
            self.answer(200, b'{"ok":true}')
        else:
            self.answer(404, NOT_FOUND)

    def start(self) -> bool:
        """Log the request, read the body and its overrides, check the key; False if answered."""
        stats = self.mock.stats
        stats.requests += 1
        raw = b"".join(self.chunks)
        streams_open = stats.streams_started - stats.streams_completed - stats.streams_aborted
        entry: dict[str, Any] = {"method": self.method, "path": self.path, "raw_path": self.raw_path,
                                 "headers": dict(self.headers), "body": None, "streams_open": streams_open,
                                 "raw": raw.decode("utf-8", "replace")}
        stats.log.append(entry)
        try:
            self.body = entry["body"] = loads(raw) if raw else None
        except ValueError:
            self.answer(400, error_body(400, "request body is not JSON"))
            return False
        if isinstance(self.body, dict) and "mock" in self.body:
            try:
                self.opts = self.opts.override(self.body["mock"])
            except ValueError as exc:
                self.answer(400, error_body(400, str(exc)))
                return False
        if self.opts.api_key is not None and self.headers.get("Authorization") != f"Bearer {self.opts.api_key}":
            sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
            self.answer(401, error_body(401, f"Incorrect API key provided: {sent[:6]}***{sent[-4:]}"))
            return False
        return True

    def route(self) -> None:
        """Dispatch on method and path."""
        path = self.path
        if self.method == "GET" and path == "/v1/models":
            self.answer(200, self.mock.models_body)
        elif self.method != "POST":
            self.answer(404, NOT_FOUND)
        elif path == "/tokenize":
            self.tokenize_vllm()
        elif path in ("/extras/tokenize", "/extras/tokenize/count"):
            self.tokenize_llamacpp(path.endswith("/count"))
        elif path in (CHAT, COMPLETIONS, EMBEDDINGS) or self.is_passthrough():
            self.inference()
        else:
            self.answer(404, NOT_FOUND)

    def is_passthrough(self) -> bool:
        """Any other /v1/ path whose body names a model is answered generically."""
        body = self.body
        return self.path.startswith("/v1/") and isinstance(body, dict) and isinstance(body.get("model"), str)

    def tokenize_vllm(self) -> None:
        """vLLM's POST /tokenize: a prompt, or messages rendered with the chat template."""
        if self.opts.tokenize != "vllm" or not isinstance(self.body, dict):
            self.answer(404, NOT_FOUND)
            return
        messages = self.body.get("messages")
        n = tokens(render(messages)) if isinstance(messages, list) else text_tokens(self.body.get("prompt"))
        self.answer(200, dumps({"count": n, "max_model_len": MAX_MODEL_LEN, "tokens": list(range(n))}))

    def tokenize_llamacpp(self, count_only: bool) -> None:
        """llama-cpp-python's /extras/tokenize[/count]: raw text, no template."""
        if self.opts.tokenize != "llamacpp" or not isinstance(self.body, dict):
            self.answer(404, NOT_FOUND)
            return
        n = text_tokens(self.body.get("input")) + self.opts.bos
        self.answer(200, dumps({"count": n} if count_only else {"tokens": list(range(n))}))

    def inference(self) -> None:
        """Chat, completions, embeddings and pass-through, in the requested mode."""
        if not isinstance(self.body, dict):
            self.answer(400, error_body(400, "request body must be a JSON object"))
            return
        mode, status = self.opts.mode, self.opts.status
        if mode == "error500":
            self.answer(500, error_body(500, "mock upstream failure"))
        elif mode == "status":
            self.answer(status, error_body(status, f"mock status {status}"),
                        {"Retry-After": "1"} if status in (429, 503) else None)
        elif mode == "bare":
            self.answer(status, b"")
        elif mode == "badjson":
            self.answer(200, BAD_JSON)
        elif mode == "hang":
            self.spawn(self.hang())
        elif self.path in (CHAT, COMPLETIONS) and self.body.get("stream") is True:
            self.stream()
        elif self.opts.latency_ms:
            self.spawn(self.delayed())
        else:
            self.whole()

    async def hang(self) -> None:
        """Never answer: wait for the client to leave, or give up and drop the connection."""
        self.gone = asyncio.Event()
        if self.closed:
            return
        try:
            await asyncio.wait_for(self.gone.wait(), HANG_SECONDS)
        except TimeoutError:
            self.conn.detach().close()

    async def delayed(self) -> None:
        """A non-streaming answer after latency_ms."""
        await asyncio.sleep(self.opts.latency_ms / 1000)
        self.whole()

    def completion_size(self) -> tuple[int, str]:
        """How many tokens to generate and the finish reason that goes with it."""
        n = self.opts.tokens
        for field in ("max_tokens", "max_completion_tokens"):
            cap = self.body.get(field)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap < n:
                n = max(cap, 0)
        return n, "length" if n < self.opts.tokens else "stop"

    def prompt_tokens(self) -> int:
        """The prompt's tokens by the documented rule for the endpoint, plus `bos`."""
        if self.path == CHAT:
            messages = self.body.get("messages")
            return (tokens(render(messages)) if isinstance(messages, list) else 0) + self.opts.bos
        if self.path == COMPLETIONS:
            return text_tokens(self.body.get("prompt")) + self.opts.bos
        if self.path == EMBEDDINGS:
            return text_tokens(self.body.get("input")) + self.opts.bos
        return tokens(json.dumps(self.body))

    def model(self) -> str:
        """The model the request named, echoed as servers do."""
        model = self.body.get("model")
        return model if isinstance(model, str) else self.mock.default_model

    def whole(self) -> None:
        """A non-streaming answer (cut short in mode 'die')."""
        path, prompt, serial = self.path, self.prompt_tokens(), next(self.mock.ids)
        if path == EMBEDDINGS:
            obj: dict[str, Any] = {"object": "list", "data": self.embeddings(), "model": self.model()}
            usage: dict[str, int] = {"prompt_tokens": prompt, "total_tokens": prompt}
        elif path in (CHAT, COMPLETIONS):
            n, finish = self.completion_size()
            text = "".join(words(n))
            if path == CHAT:
                obj = {"id": f"chatcmpl-mock-{serial}", "object": "chat.completion"}
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                          "finish_reason": finish}
            else:
                obj = {"id": f"cmpl-mock-{serial}", "object": "text_completion"}
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            obj.update(created=int(time.time()), model=self.model(), system_fingerprint=self.opts.name,
                       choices=[choice])
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        else:
            obj = {"id": f"mock-{serial}", "object": "mock.passthrough", "created": int(time.time()),
                   "model": self.model(), "path": path}
            usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
        if self.opts.usage_body:
            obj["usage"] = usage
        body = dumps(obj)
        if self.opts.mode == "die":
            self.spawn(self.die_whole(body))
        else:
            self.answer(200, body)

    def embeddings(self) -> list[dict]:
        """One fixed vector per input, as floats or, if asked (the openai SDK does), base64 float32."""
        value = self.body.get("input")
        count = len(value) if isinstance(value, list) and value and not isinstance(value[0], int) else 1
        as_base64 = self.body.get("encoding_format") == "base64"
        data = []
        for i in range(count):
            vec: Any = vector(i)
            if as_base64:
                vec = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        return data

    async def die_whole(self, body: bytes) -> None:
        """Promise 100 bytes more than the body, send half of it, then cut the connection."""
        headers = httputil.HTTPHeaders(
            {"Content-Type": JSON_TYPE, "Content-Length": str(len(body) + 100), "x-mock-name": self.opts.name}
        )
        await self.conn.write_headers(start_line(200), headers, body[: len(body) // 2])
        self.conn.detach().close()

    def stream(self) -> None:
        """Start an SSE stream: headers at once, then chunks paced by timers, not a task per stream.

        Timer callbacks cost a fraction of a coroutine step per chunk, which is what lets one core
        keep a thousand streams on time.
        """
        self.mock.stats.streams_started += 1
        self.stream_open = True
        chunks = self.stream_chunks()
        self.pending = chunks[: self.opts.die_after] if self.opts.mode == "die" else chunks
        self.pending.reverse()
        headers = httputil.HTTPHeaders(
            {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-mock-name": self.opts.name}
        )
        self.conn.write_headers(start_line(200), headers)
        asyncio.get_running_loop().call_later(self.opts.latency_ms / 1000, self.next_chunk)

    def next_chunk(self) -> None:
        """Write one chunk and schedule the next; after the last, end the stream (or cut it, in 'die')."""
        if self.closed:
            return
        written = self.conn.write(self.pending.pop()) if self.pending else None
        if self.pending:
            asyncio.get_running_loop().call_later(self.opts.interval_ms / 1000, self.next_chunk)
        elif self.opts.mode == "die":
            self.stream_open = False
            if written is None:
                self.conn.detach().close()
            else:
                written.add_done_callback(lambda _: self.conn.detach().close())
        else:
            self.conn.write(b"data: [DONE]\n\n")
            if self.stream_open:
                self.stream_open = False
                self.mock.stats.streams_completed += 1
            if self.opts.linger_ms:
                asyncio.get_running_loop().call_later(self.opts.linger_ms / 1000, self.end_stream)
            else:
                self.conn.finish()

    def end_stream(self) -> None:
        """End a lingering stream's response, unless its client has left."""
        if not self.closed:
            self.conn.finish()

    def stream_chunks(self) -> list[bytes]:
        """The stream's data events: one per word (the last with finish_reason), then usage if asked.

        The fields every event shares are serialised once per stream.
        """
        n, finish = self.completion_size()
        chat = self.path == CHAT
        options = self.body.get("stream_options")
        with_usage = self.opts.usage_chunk and isinstance(options, dict) and options.get("include_usage") is True
        serial = next(self.mock.ids)
        head = b"data: " + dumps({
            "id": f"chatcmpl-mock-{serial}" if chat else f"cmpl-mock-{serial}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model(),
            "system_fingerprint": self.opts.name,
        })[:-1] + b',"choices":'
        tail = b',"usage":null}\n\n' if with_usage else b"}\n\n"
        pieces = words(n) or ("",)
        chunks = []
        for i, piece in enumerate(pieces):
            reason = finish if i == len(pieces) - 1 else None
            if chat:
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": reason}
            chunks.append(head + dumps([choice]) + tail)
        if with_usage:
            prompt = self.prompt_tokens()
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            chunks.append(head + b'[],"usage":' + dumps(usage) + b"}\n\n")
        return chunks


class MockServer(httputil.HTTPServerConnectionDelegate):
    """Hands each request on a connection to a fresh `Exchange`."""

    def __init__(self, mock: Mock) -> None:
        self.mock = mock

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> Exchange:
        """Sets TCP_NODELAY for the request, as the asyncio servers the mock stands for do (uvicorn,
        under vLLM and llama-cpp-python). Without it a stream's first chunk, written after its
        headers, waits for the client's delayed ACK (about 40 ms on Linux) on Nagle's rule. Per
        request: Tornado turns it off again when a request on a kept-alive connection ends."""
        assert isinstance(request_conn, HTTP1Connection)
        request_conn.stream.set_nodelay(True)
        return Exchange(self.mock, request_conn)


def start_line(status: int) -> httputil.ResponseStartLine:
    """The status line for a code."""
    return httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses.get(status, "Unknown"))


def make_mock(options: Options, model_names: list[str]) -> Mock:
    """The shared state, with the model list serialised once."""
    models = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "mock"} for m in model_names]}
    return Mock(options=options, models_body=dumps(models), default_model=model_names[0])


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    """The command line, turned into the process-wide options."""
    p = argparse.ArgumentParser(prog="python -m bench.mock_upstream", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks a free one [127.0.0.1:0]")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before the answer or first chunk [0]")
    p.add_argument("--tokens", type=int, default=16, help="completion tokens, capped by max_tokens [16]")
    p.add_argument("--interval-ms", type=float, default=0.0, help="gap between stream chunks [0]")
    p.add_argument("--usage-chunk", choices=("on", "off"), default="on", help="final usage chunk when asked [on]")
    p.add_argument("--usage-body", choices=("on", "off"), default="on", help="usage in non-stream bodies [on]")
    p.add_argument("--tokenize", choices=TOKENIZERS, default="vllm", help="which tokenize endpoint exists [vllm]")
    p.add_argument("--mode", choices=MODES, default="ok", help="how POST /v1/... answers [ok]")
    p.add_argument("--die-after", type=int, default=3, help="chunks sent before 'die' cuts a stream [3]")
    p.add_argument("--status", type=int, default=503, help="HTTP status of mode 'status' [503]")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <this>' [none]")
    p.add_argument("--name", default="mock", help="echoed in x-mock-name and system_fingerprint [mock]")
    p.add_argument("--model-names", default="mock-model", help="comma list for GET /v1/models [mock-model]")
    p.add_argument("--linger-ms", type=float, default=0.0, help="hold a stream open after [DONE] [0]")
    p.add_argument("--bos", type=int, default=0,
                   help="tokens a BOS adds to every prompt and llamacpp tokenize count, as llama-cpp-python [0]")
    args = p.parse_args(argv)
    raw = {name: getattr(args, name) for name in OPTION_NAMES}
    try:
        options = Options(**{k: check_option(k, v) for k, v in raw.items()})
    except ValueError as exc:
        p.error(str(exc))
    return args, options


async def serve(args: argparse.Namespace, options: Options) -> None:
    """Serve until SIGTERM or SIGINT."""
    names = [m.strip() for m in args.model_names.split(",") if m.strip()] or ["mock-model"]
    server = HTTPServer(MockServer(make_mock(options, names)), xheaders=False)
    await serve_until_signal(server, args.listen)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.mock_upstream`."""
    args, options = parse_args(argv)
    asyncio.run(serve(args, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
