"""Real parts on loopback: the mock upstream and the gateway run as their own processes.

Every test gets fresh processes, a fresh SQLite file and a fresh spool folder under its own
tmp_path, so no test depends on another's state or on the order tests run in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.idp import LoopbackIdP, make_key_pair

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 15.0
SESSION_SECRET = "test-session-secret-0123456789abcdef"


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, headers: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


@dataclass
class MockUpstream:
    """The project's mock LLM server (bench/mock_upstream.py) as a subprocess."""

    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict]:
        return http_json("GET", self.url + "/mock/requests")[1]

    def stats(self) -> dict:
        return http_json("GET", self.url + "/mock/stats")[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, with no persistence: a restart empties it."""

    workdir: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, STARTUP_TIMEOUT, what="redis-server")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, free_port()).start()
    yield server
    server.kill()


@dataclass
class GatewayProcess:
    """`llmgateway serve` as a subprocess, with its config, store and log under tmp_path."""

    workdir: Path
    port: int
    config_path: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    store_path: Path | None = None

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.store_path or self.workdir / "gateway.db"

    def start(self) -> GatewayProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmgateway", "serve", "--config", str(self.config_path)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.log()}")
            try:
                return http_json("GET", self.url + "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(up, STARTUP_TIMEOUT, what="gateway /healthz")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "llmgateway", *args, "--config", str(self.config_path)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=30,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"llmgateway {' '.join(args)} failed: {result.stderr}")
        return result

    def create_key(self, user: str = "alice", name: str = "test", models: str | None = None,
                   expires_days: float | None = None) -> str:
        args = ["keys", "create", "--user", user, "--name", name]
        if models is not None:
            args += ["--models", models]
        if expires_days is not None:
            args += ["--expires-days", str(expires_days)]
        return self.cli(*args).stdout.strip()

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30, **kwargs)

    def events(self) -> list[dict]:
        """Usage events as stored, read straight from the SQLite file."""
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(self.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM usage_events ORDER BY ts, request_id")]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def wait_events(self, count: int, timeout: float = 15.0) -> list[dict]:
        """Wait until exactly `count` events are stored (fails if more appear)."""
        events = wait_for(lambda: (e := self.events()) and len(e) >= count and e, timeout,
                          what=f"{count} usage events") if count else self.events()
        assert len(events) == count, f"expected {count} events, got {len(events)}"
        return events


def model_toml(model_id: str, upstreams: list[str], **extra: Any) -> str:
    lines = ["[[models]]", f"id = {json.dumps(model_id)}", f"upstreams = {json.dumps(upstreams)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator[Callable[..., MockUpstream]]:
    """Start a mock upstream with the given command-line flags; stopped after the test."""
    started: list[MockUpstream] = []

    def start(*flags: str) -> MockUpstream:
        with open(tmp_path / f"mock{len(started)}.log", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "bench.mock_upstream", "--listen", "127.0.0.1:0", *flags],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            raise AssertionError(f"mock upstream did not start: {line!r}")
        mock = MockUpstream(proc, int(line.split()[1]))
        started.append(mock)
        return mock

    yield start
    for mock in started:
        mock.stop()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Write a config (models + extra TOML) and start a gateway on a free port."""
    started: list[GatewayProcess] = []

    def start(models: str, extra: str = "", env: dict[str, str] | None = None, run: bool = True,
              server: str = "", store_query: str = "", store_path: Path | None = None) -> GatewayProcess:
        """`store_path` shares one SQLite file between gateways (as replicas share a store)."""
        workdir = tmp_path / f"gw{len(started)}"
        workdir.mkdir()
        port = free_port()
        config = workdir / "gateway.toml"
        if "drain_seconds" not in server:
            server += "\ndrain_seconds = 10"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n{server}\n'
            f'[store]\nurl = "sqlite:///{store_path or workdir / "gateway.db"}{store_query}"\n'
            f'[usage]\nspool_dir = "{workdir / "spool"}"\nflush_interval_seconds = 0.2\n'
            f"{extra}\n{models}"
        )
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_") and k != "LLM_DEFAULT_URL"}
        full_env.update(env or {})
        gw = GatewayProcess(workdir, port, config, full_env, store_path=store_path)
        started.append(gw)
        return gw.start() if run else gw

    yield start
    for gw in started:
        if gw.proc is not None:
            gw.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackIdP]:
    """A pysaml2 IdP on loopback (one per test module: it starts in a second, and every test
    starts its own login, so none depends on another's state) with three people."""
    server = LoopbackIdP(tmp_path_factory.mktemp("idp"))
    server.add_person("alice@example.edu", ["faculty", "member"])
    server.add_person("root@example.edu", ["employee"], isMemberOf=["llm-admins"])
    server.add_person("sam@example.edu", ["student", "member"])
    yield server
    server.stop()


@pytest.fixture
def saml_gw(start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream],
            idp: LoopbackIdP) -> GatewayProcess:
    """A gateway (with a mock upstream) whose portal logs in through the module's IdP, signing
    its requests with a key of its own; the IdP is given the gateway's SP metadata."""
    upstream = start_mock().url
    gw = start_gateway(model_toml("test-model", [upstream]) + model_toml("other-model", [upstream]),
                       env={"LLMGW_SESSION_SECRET": SESSION_SECRET}, run=False)
    key, cert = make_key_pair(gw.workdir, "sp")
    gw.config_path.write_text(gw.config_path.read_text() + (
        f'\n[portal]\nenabled = true\npublic_url = "{gw.url}"\n'
        f'[saml]\nidp_metadata_url = "{idp.url}/metadata"\nsp_cert_file = "{cert}"\nsp_key_file = "{key}"\n'
        'sign_requests = true\nadmin_values = ["llm-admins"]\n'
        # models added through the admin UI may use any loopback port (the tests' own mock upstreams)
        '[admin]\nmodel_hosts = ["127.0.0.1"]\n'
    ))
    gw.start()
    idp.trust_sp(http_text(gw.url + "/saml/metadata"))
    return gw
