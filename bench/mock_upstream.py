"""A mock OpenAI-compatible LLM server for the tests and the benchmark.

Run from the repo root: ``python -m bench.mock_upstream --listen 127.0.0.1:0 [options]``. When it
serves it prints one line ``READY <port>`` (the real port) on stdout; SIGTERM or SIGINT stops it.
It is fast on purpose (no access log, fixed bodies built once, no ETag hashing) so that it is never
the bottleneck of a gateway benchmark.

Every process-wide option (``--latency-ms``, ``--tokens``, ``--interval-ms``, ``--usage-chunk``,
``--usage-body``, ``--tokenize``, ``--mode``, ``--die-after``, ``--status``, ``--api-key``,
``--name``) can be overridden for one request by a JSON object ``"mock"`` in its body, with the
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
- The completion text is ``"w0 w1 ... w<N-1>"``, so ``completion_tokens = N``, where
  ``N = min(tokens, max_tokens or max_completion_tokens)``. ``finish_reason`` is ``"length"``
  when the request's cap is below ``tokens``, else ``"stop"``.
- A stream sends one chunk per word (the first also carries ``"role": "assistant"``, the rest
  have a leading space), ``finish_reason`` on the last content chunk (as vLLM), then, when the
  request has ``stream_options.include_usage`` and ``usage_chunk`` is on, a chunk with
  ``"choices": []`` and the usage (every other chunk then carries ``"usage": null``), then
  ``data: [DONE]``.
- Other ``POST /v1/<path>`` bodies naming a model answer ``object: "mock.passthrough"`` with
  ``prompt_tokens = tokens(json.dumps(body))`` (the body as received) and 2 completion tokens.

Modes apply to ``POST /v1/...`` only; ``GET /v1/models`` and the tokenize endpoints always answer
normally. Tests can read ``GET /mock/requests``, ``GET /mock/stats`` and ``POST /mock/reset``.
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
import re
import signal
import struct
import sys
import time
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MODES = ("ok", "error500", "badjson", "hang", "die", "status")
TOKENIZERS = ("vllm", "llamacpp", "none")
HANG_SECONDS = 120.0
REQUEST_LOG_SIZE = 200
EMBEDDING_DIM = 8
MAX_MODEL_LEN = 4096
JSON_TYPE = "application/json"
NOT_FOUND = b'{"detail":"Not Found"}'
BAD_JSON = b'{"id": "x", '
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def tokens(text: str) -> int:
    """The mock's token count: words and single punctuation marks."""
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
    if key in ("latency_ms", "interval_ms"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key} must be a number >= 0")
        return float(value)
    if key in ("tokens", "die_after"):
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


class BaseHandler(RequestHandler):
    """No ETag hashing and no default headers beyond what clients need: the mock must be cheap."""

    mock: Mock

    def initialize(self, mock: Mock) -> None:
        self.mock = mock

    def compute_etag(self) -> None:
        return None

    def answer(self, status: int, body: bytes, content_type: str = JSON_TYPE) -> None:
        """Send a whole body."""
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(body)


class ControlHandler(BaseHandler):
    """/mock/requests, /mock/stats, /mock/reset: what tests read about the traffic."""

    def get(self, what: str) -> None:
        stats = self.mock.stats
        if what == "requests":
            self.answer(200, dumps(list(stats.log)))
        elif what == "stats":
            self.answer(200, dumps(stats.as_dict()))
        else:
            self.answer(404, NOT_FOUND)

    def post(self, what: str) -> None:
        if what == "reset":
            self.mock.stats.reset()
            self.answer(200, b'{"ok":true}')
        else:
            self.answer(404, NOT_FOUND)


class ApiHandler(BaseHandler):
    """Every other path: the OpenAI API, the tokenize endpoints, and 404 for the rest."""

    opts: Options
    body: Any
    stream_open = False
    closed = False

    def initialize(self, mock: Mock) -> None:
        super().initialize(mock)
        self.set_header("x-mock-name", mock.options.name)

    async def get(self) -> None:
        if self.start():
            if self.request.path == "/v1/models":
                self.answer(200, self.mock.models_body)
            else:
                self.answer(404, NOT_FOUND)

    async def post(self) -> None:
        if not self.start():
            return
        path = self.request.path
        if path == "/tokenize":
            self.tokenize_vllm()
        elif path in ("/extras/tokenize", "/extras/tokenize/count"):
            self.tokenize_llamacpp(path.endswith("/count"))
        elif path in (CHAT, COMPLETIONS, EMBEDDINGS) or self.is_passthrough(path):
            await self.inference(path)
        else:
            self.answer(404, NOT_FOUND)

    def is_passthrough(self, path: str) -> bool:
        """Any other /v1/ path whose body names a model is answered generically."""
        return path.startswith("/v1/") and isinstance(self.body, dict) and isinstance(self.body.get("model"), str)

    def start(self) -> bool:
        """Log the request, read the body and its overrides, check the key; False if answered."""
        stats = self.mock.stats
        stats.requests += 1
        raw = self.request.body
        entry = {"method": self.request.method, "path": self.request.path, "headers": dict(self.request.headers)}
        stats.log.append(entry)
        try:
            self.body = json.loads(raw) if raw else None
        except ValueError:
            entry["body"] = None
            self.answer(400, error_body(400, "request body is not JSON"))
            return False
        entry["body"] = self.body
        self.opts = self.mock.options
        if isinstance(self.body, dict) and "mock" in self.body:
            try:
                self.opts = self.opts.override(self.body["mock"])
            except ValueError as exc:
                self.answer(400, error_body(400, str(exc)))
                return False
        if self.opts.name != self.mock.options.name:
            self.set_header("x-mock-name", self.opts.name)
        if self.opts.api_key is not None and self.request.headers.get("Authorization") != f"Bearer {self.opts.api_key}":
            self.answer(401, error_body(401, "Incorrect API key provided"))
            return False
        return True

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
        n = text_tokens(self.body.get("input"))
        self.answer(200, dumps({"count": n} if count_only else {"tokens": list(range(n))}))

    async def inference(self, path: str) -> None:
        """Chat, completions, embeddings and pass-through, in the requested mode."""
        if not isinstance(self.body, dict):
            self.answer(400, error_body(400, "request body must be a JSON object"))
            return
        mode = self.opts.mode
        if mode == "error500":
            self.answer(500, error_body(500, "mock upstream failure"))
        elif mode == "status":
            if self.opts.status in (429, 503):
                self.set_header("Retry-After", "1")
            self.answer(self.opts.status, error_body(self.opts.status, f"mock status {self.opts.status}"))
        elif mode == "badjson":
            self.answer(200, BAD_JSON)
        elif mode == "hang":
            await self.hang()
        elif path in (CHAT, COMPLETIONS) and self.body.get("stream") is True:
            await self.stream(path)
        else:
            await self.whole(path)

    async def hang(self) -> None:
        """Never answer: wait for the client to leave, or give up and drop the connection."""
        deadline = time.monotonic() + HANG_SECONDS
        while not self.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not self.closed:
            self.detach().close()

    def completion_size(self) -> tuple[int, str]:
        """How many tokens to generate and the finish reason that goes with it."""
        n = self.opts.tokens
        for field in ("max_tokens", "max_completion_tokens"):
            cap = self.body.get(field)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap < n:
                n = max(cap, 0)
        return n, "length" if n < self.opts.tokens else "stop"

    def prompt_tokens(self, path: str) -> int:
        """The prompt's tokens by the documented rule for the endpoint."""
        if path == CHAT:
            messages = self.body.get("messages")
            return tokens(render(messages)) if isinstance(messages, list) else 0
        if path == COMPLETIONS:
            return text_tokens(self.body.get("prompt"))
        if path == EMBEDDINGS:
            return text_tokens(self.body.get("input"))
        return tokens(json.dumps(self.body))

    def model(self) -> str:
        """The model the request named, echoed as servers do."""
        model = self.body.get("model")
        return model if isinstance(model, str) else self.mock.default_model

    async def whole(self, path: str) -> None:
        """A non-streaming answer."""
        if self.opts.latency_ms:
            await asyncio.sleep(self.opts.latency_ms / 1000)
        prompt = self.prompt_tokens(path)
        serial = next(self.mock.ids)
        common = {"created": int(time.time()), "model": self.model()}
        if path == EMBEDDINGS:
            obj: dict[str, Any] = {"object": "list", "data": self.embeddings(), "model": common["model"]}
            usage: dict[str, int] = {"prompt_tokens": prompt, "total_tokens": prompt}
        elif path in (CHAT, COMPLETIONS):
            n, finish = self.completion_size()
            text = "".join(words(n))
            if path == CHAT:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                          "finish_reason": finish}
                obj = {"id": f"chatcmpl-mock-{serial}", "object": "chat.completion", **common}
            else:
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                obj = {"id": f"cmpl-mock-{serial}", "object": "text_completion", **common}
            obj.update(system_fingerprint=self.opts.name, choices=[choice])
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        else:
            obj = {"id": f"mock-{serial}", "object": "mock.passthrough", **common, "path": path}
            usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
        if self.opts.usage_body:
            obj["usage"] = usage
        body = dumps(obj)
        if self.opts.mode == "die":
            self.die_whole(body)
        else:
            self.answer(200, body)

    def embeddings(self) -> list[dict]:
        """One fixed vector per input, as floats or as base64 float32 if asked."""
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

    def die_whole(self, body: bytes) -> None:
        """Promise more body than is sent, then cut the connection."""
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {JSON_TYPE}\r\nx-mock-name: {self.opts.name}\r\n"
            f"Content-Length: {len(body) + 100}\r\n\r\n"
        ).encode()
        stream = self.detach()
        stream.write(head + body[: len(body) // 2]).add_done_callback(lambda _: stream.close())

    async def stream(self, path: str) -> None:
        """An SSE stream, one flushed chunk per word, timed by latency_ms and interval_ms."""
        stats = self.mock.stats
        stats.streams_started += 1
        self.stream_open = True
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        try:
            await self.flush()
            chunks = self.stream_chunks(path)
            last = min(len(chunks), self.opts.die_after) if self.opts.mode == "die" else len(chunks)
            delay = self.opts.latency_ms
            for chunk in chunks[:last]:
                if delay:
                    await asyncio.sleep(delay / 1000)
                if self.closed:
                    return
                self.write(chunk)
                await self.flush()
                delay = self.opts.interval_ms
            if self.opts.mode == "die":
                self.stream_open = False
                self.detach().close()
                return
            self.write(b"data: [DONE]\n\n")
            await self.finish()
        except StreamClosedError:
            self.client_gone()
            return
        self.stream_open = False
        stats.streams_completed += 1

    def stream_chunks(self, path: str) -> list[bytes]:
        """The stream's data events: one per word (the last with finish_reason), then usage if asked."""
        n, finish = self.completion_size()
        chat = path == CHAT
        options = self.body.get("stream_options")
        with_usage = self.opts.usage_chunk and isinstance(options, dict) and options.get("include_usage") is True
        serial = next(self.mock.ids)
        head: dict[str, Any] = {
            "id": f"chatcmpl-mock-{serial}" if chat else f"cmpl-mock-{serial}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model(),
            "system_fingerprint": self.opts.name,
        }
        pieces = words(n) or ("",)
        chunks = []
        for i, piece in enumerate(pieces):
            reason = finish if i == len(pieces) - 1 else None
            if chat:
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": reason}
            event = {**head, "choices": [choice], "usage": None} if with_usage else {**head, "choices": [choice]}
            chunks.append(b"data: " + dumps(event) + b"\n\n")
        if with_usage:
            prompt = self.prompt_tokens(path)
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            chunks.append(b"data: " + dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        return chunks

    def client_gone(self) -> None:
        """Count a stream the client left before its end (once)."""
        self.closed = True
        if self.stream_open:
            self.stream_open = False
            self.mock.stats.streams_aborted += 1

    def on_connection_close(self) -> None:
        self.client_gone()


def make_app(options: Options, model_names: list[str]) -> Application:
    """The Tornado application with its shared state."""
    models = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "mock"} for m in model_names]}
    mock = Mock(options=options, models_body=dumps(models), default_model=model_names[0])
    return Application(
        [(r"/mock/(\w+)", ControlHandler, {"mock": mock}), (r"/.*", ApiHandler, {"mock": mock})],
        log_function=lambda handler: None,
        compress_response=False,
    )


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
    args = p.parse_args(argv)
    raw = {name: getattr(args, name) for name in OPTION_NAMES}
    try:
        options = Options(**{k: check_option(k, v) for k, v in raw.items()})
    except ValueError as exc:
        p.error(str(exc))
    return args, options


async def serve(args: argparse.Namespace, options: Options) -> None:
    """Serve until SIGTERM or SIGINT."""
    host, _, port = args.listen.rpartition(":")
    names = [m.strip() for m in args.model_names.split(",") if m.strip()] or ["mock-model"]
    sockets = bind_sockets(int(port), host or "127.0.0.1", backlog=4096)
    server = HTTPServer(make_app(options, names), xheaders=False)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.mock_upstream`."""
    args, options = parse_args(argv)
    asyncio.run(serve(args, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
