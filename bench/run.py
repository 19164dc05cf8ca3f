"""`python -m bench.run`: the gateway against going direct to the mock upstream, in one report.

It starts the mock upstream and the gateway from this repository on loopback (the gateway pinned
to one core, the mock and the load drivers to another), makes a key, then measures each target
the same way: latency of sequential requests on one connection, throughput at 50 connections,
and many concurrent streams (time to first token, inter-chunk gaps, the gateway's peak RSS).
It prints a Markdown table (direct, gateway, added) and writes the figures as JSON. Every child
runs in its own session and is stopped on exit, Ctrl-C or SIGTERM included.

`--python PATH` (or `--python-venv DIR`, made from /usr/bin/python3.11 when missing) chooses the
interpreter that runs the gateway; the report names it and what its build flags say about
PGO/LTO. `--baseline` also measures `bench.minimal_relay` (bare Tornado + pycurl, same core, same
interpreter) and adds its column, so the gateway's cost over the bare relay shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import load

REPO = Path(__file__).resolve().parent.parent
MODEL = "mock-model"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
VENV_BASE = "/usr/bin/python3.11"
VENV_PACKAGES = (
    "tornado", "pycurl", "APScheduler", "pymongo", "redis", "python3-saml", "python-jose", "xmlsec", "lxml",
    "prometheus_client",
)
PIP_TIMEOUT = 900.0
# Points by which the target's core may be busier than the target itself (the kernel's loopback
# work is part of it: about 15 points with 1000 streams) before a note says other work shared it.
OTHER_WORK_POINTS = 25.0

# Run with the gateway's interpreter: what it is, what its configure flags say, what it imports.
PROBE = r"""
import json, platform, shlex, sys, sysconfig
args = shlex.split(sysconfig.get_config_var("CONFIG_ARGS") or "")
lto = [a for a in args if a == "--with-lto" or a.startswith("--with-lto=")]
found = {
    "executable": sys.executable,
    "base_executable": getattr(sys, "_base_executable", sys.executable),
    "version": platform.python_version(),
    "implementation": platform.python_implementation(),
    "compiler": platform.python_compiler(),
    "venv": sys.prefix != sys.base_prefix,
    "config_pgo": "--enable-optimizations" in args,
    "config_lto": bool(lto) and lto[-1] != "--with-lto=no",
    "config_args": " ".join(args),
}
for name in ("tornado", "pycurl", "apscheduler"):
    try:
        module = __import__(name)
        found[name] = getattr(module, "version", None) or getattr(module, "__version__", "?")
    except ImportError:
        found[name] = None
print(json.dumps(found))
"""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much load each measurement applies."""

    requests: int
    warmup: int
    connections: int
    duration: float
    streams: int
    chunks: int
    interval_ms: float
    ramp_s: float

    @property
    def stream_timeout(self) -> float:
        """Generous bound on one stream: three times its nominal length, at least 30 s."""
        return max(30.0, 3 * self.chunks * self.interval_ms / 1000)


class Children:
    """The processes this run started; each in its own session, so its whole group can be stopped."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], cpu: int | None, stdout: int | None = None) -> subprocess.Popen:
        """Start `cmd` (pinned to `cpu` if given) with its stderr (and stdout unless piped) in a log file."""
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=stdout if stdout is not None else log, stderr=log, start_new_session=True
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The end of a child's log, to explain a failure."""
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        """SIGTERM each child's process group, newest first; SIGKILL what is still there after a while."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mock(children: Children, plan: Plan, cpu: int | None, name: str) -> tuple[subprocess.Popen, int]:
    """The mock upstream, answering `plan.chunks` tokens, streams paced at `plan.interval_ms`."""
    cmd = [
        sys.executable, "-m", "bench.mock_upstream", "--listen", "127.0.0.1:0", "--name", name,
        "--tokens", str(plan.chunks), "--interval-ms", f"{plan.interval_ms:g}", "--model-names", MODEL,
    ]
    return wait_ready(children, name, children.start(name, cmd, cpu, stdout=subprocess.PIPE))


def start_relay(
    children: Children, python: str, mock_port: int, plan: Plan, cpu: int | None
) -> tuple[subprocess.Popen, int]:
    """`bench.minimal_relay` in front of the mock, run by the gateway's interpreter on the gateway's core."""
    cmd = [
        python, "-m", "bench.minimal_relay", "--listen", "127.0.0.1:0", "--upstream",
        f"http://127.0.0.1:{mock_port}", "--max-clients", str(max(1000, plan.streams + 50)),
    ]
    return wait_ready(children, "relay", children.start("relay", cmd, cpu, stdout=subprocess.PIPE))


def wait_ready(children: Children, name: str, proc: subprocess.Popen) -> tuple[subprocess.Popen, int]:
    """Wait for a child's `READY <port>` line on its stdout; the child and its port."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("READY "):
        raise BenchError(f"{name} did not start:\n{children.log_tail(name)}")
    return proc, int(line.split()[1])


def gateway_config(workdir: Path, port: int, mock_port: int, plan: Plan, limits: str = "off",
                   redis_url: str = "", extra: str = "") -> Path:
    """A throw-away gateway config: SQLite store and usage spool in the work directory.

    With `limits` on, every call is admitted through the limiter (limits too high to refuse
    anything), in-process or, with `redis_url`, through Redis with the shared key cache. `extra`
    is more TOML (bench.metrics_cost adds a [metrics] listener).
    """
    path = workdir / "gateway.toml"
    if limits != "off":
        extra += "[limits.key]\nrequests_per_minute = 1000000000\nconcurrent_requests = 1000000\n\n"
    if redis_url:
        extra += f'[redis]\nurl = "{redis_url}"\n\n'
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndrain_seconds = 1\n\n'
        f"[upstream]\nmax_clients = {max(1000, plan.streams + 50)}\n\n"
        f'[store]\nurl = "sqlite:///{workdir}/gateway.db"\n\n'
        f'[usage]\nspool_dir = "{workdir}/spool"\n\n'
        f"{extra}"
        f'[[models]]\nid = "{MODEL}"\nupstreams = ["http://127.0.0.1:{mock_port}"]\n',
        encoding="utf-8",
    )
    return path


def start_redis(children: Children, cpu: int | None) -> str:
    """A throw-away redis-server (no persistence) on the client's core; returns its URL."""
    if shutil.which("redis-server") is None:
        raise BenchError("--limits redis needs redis-server (apt-get install redis-server)")
    port = free_port()
    children.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], cpu, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise BenchError(f"redis-server did not answer in {START_TIMEOUT:g} s")


def start_gateway(
    children: Children, python: str, workdir: Path, mock_port: int, plan: Plan, cpu: int | None,
    limits: str = "off", redis_url: str = "", extra: str = "", name: str = "gateway",
) -> tuple[subprocess.Popen, int, str]:
    """The gateway from this repository, with a fresh key; waits for GET /healthz to answer 200."""
    port = free_port()
    config = gateway_config(workdir, port, mock_port, plan, limits, redis_url, extra)
    made = subprocess.run(
        [python, "-m", "llmgateway", "keys", "create", "--config", str(config), "--user", "bench",
         "--name", "bench"],
        cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT,
    )
    key = made.stdout.strip()
    if made.returncode != 0 or not key:
        raise BenchError(f"could not create a gateway key:\n{made.stderr.strip()}")
    proc = children.start(name, [python, "-m", "llmgateway", "serve", "--config", str(config)], cpu)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the gateway exited with status {proc.returncode}:\n{children.log_tail(name)}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer,
        ):
            if answer.status == 200:
                return proc, port, key
        time.sleep(0.1)
    raise BenchError(f"the gateway did not answer /healthz in {START_TIMEOUT:g} s:\n{children.log_tail(name)}")


def ensure_wrk() -> bool:
    """wrk on PATH, installing the Debian package if missing and possible; False means the Python driver."""
    if shutil.which("wrk"):
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
    return shutil.which("wrk") is not None


def gateway_python(args: argparse.Namespace) -> str:
    """The interpreter that runs the gateway (and the minimal relay): --python, a --python-venv, or this one."""
    if args.python_venv is not None:
        return str(ensure_venv(args.python_venv))
    return args.python or sys.executable


def ensure_venv(path: Path) -> Path:
    """A venv at `path` from Debian's python3.11 with the gateway's dependencies; made or filled if needed."""
    path = path.absolute()
    python = path / "bin" / "python"
    if not path.exists():
        if not os.access(VENV_BASE, os.X_OK):
            raise BenchError(f"{VENV_BASE} is missing (apt-get install python3.11-venv), or give --python PATH")
        say(f"making a venv in {path} from {VENV_BASE}")
        made = subprocess.run([VENV_BASE, "-m", "venv", str(path)], capture_output=True, text=True,
                              timeout=PIP_TIMEOUT, check=False)
        if made.returncode != 0:
            raise BenchError(f"could not make the venv {path}:\n{made.stderr.strip()}")
    if not python.exists():
        raise BenchError(f"{path} exists but has no bin/python: not a venv; remove it or choose another directory")
    check = [str(python), "-c", "import tornado, pycurl, apscheduler, pymongo, redis, onelogin.saml2, jose, xmlsec, "
             "prometheus_client"]
    if subprocess.run(check, capture_output=True, timeout=START_TIMEOUT, check=False).returncode == 0:
        return python
    pinned = []
    for name in VENV_PACKAGES:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    attempts = [pinned] if pinned == list(VENV_PACKAGES) else [pinned, list(VENV_PACKAGES)]
    for packages in attempts:
        say(f"installing {' '.join(packages)} into {path}")
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
            capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False,
        )
        if done.returncode == 0:
            return python
        say("\n".join(done.stderr.strip().splitlines()[-5:]))
    raise BenchError(f"could not install {' '.join(VENV_PACKAGES)} into {path} (see above)")


def describe_python(python: str) -> dict[str, Any]:
    """What runs the gateway: path, version, PGO/LTO in its configure flags, library versions."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=START_TIMEOUT,
                              check=False)
    except OSError as exc:
        raise BenchError(f"cannot run the gateway's interpreter {python}: {exc}") from None
    if done.returncode != 0:
        raise BenchError(f"cannot run the gateway's interpreter {python}:\n{done.stderr.strip()}")
    info: dict[str, Any] = json.loads(done.stdout)
    missing = [name for name in ("tornado", "pycurl", "apscheduler") if info.get(name) is None]
    if missing:
        raise BenchError(f"{python} cannot import {', '.join(missing)}: install them there, or let "
                         "--python-venv DIR make an interpreter that has them")
    info["debian_package"] = debian_package(info["base_executable"])
    if info["debian_package"] and not (info["config_pgo"] or info["config_lto"]):
        info["pgo_lto_note"] = ("Debian's packaging runs its PGO and LTO builds outside configure (on amd64 and "
                                "arm64) and keeps those flags out of sysconfig, so CONFIG_ARGS cannot show them")
    return info


def debian_package(executable: str) -> str | None:
    """The Debian package (and version) that owns an interpreter binary, if dpkg knows it."""
    if not shutil.which("dpkg-query"):
        return None
    real = os.path.realpath(executable)
    owner = subprocess.run(["dpkg-query", "-S", real], capture_output=True, text=True, timeout=10, check=False)
    if owner.returncode != 0:
        return None
    package = owner.stdout.split(": ", 1)[0].split(",")[0].strip()
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
    return f"{package} {version}".strip()


def python_summary(info: dict[str, Any]) -> str:
    """One line for the report header: which interpreter ran the gateway, and how it was built."""
    base = f"venv of {info['base_executable']}, " if info.get("venv") else ""
    debian = f", Debian {info['debian_package']}" if info.get("debian_package") else ""
    curl = " ".join(str(info.get("pycurl", "")).split()[:2])
    flags = (f"--enable-optimizations {'yes' if info['config_pgo'] else 'no'}, "
             f"--with-lto {'yes' if info['config_lto'] else 'no'}")
    note = f" ({info['pgo_lto_note']})" if info.get("pgo_lto_note") else ""
    return (f"gateway python: {info['executable']} ({base}{info['implementation']} {info['version']}{debian}; "
            f"tornado {info['tornado']}, {curl}); CONFIG_ARGS: {flags}{note}")


def measure(
    target: load.Target, plan: Plan, pid: int, client_cpu: int | None, use_wrk: bool, cores: list[int]
) -> dict[str, Any]:
    """Latency, throughput and streams against one target; `pid` is the process to watch."""
    say(f"  latency: {plan.requests} sequential requests after {plan.warmup} warm-up")
    used = load.cpu_seconds(pid)
    latency = load.sequential_latency(target, load.chat_body(MODEL, False), plan.requests, plan.warmup)
    used = load.cpu_seconds(pid) - used
    latency |= {"target_cpu_s": round(used, 3),
                "target_cpu_us_per_request": round(1e6 * used / (plan.requests + plan.warmup), 1)}
    say(f"  throughput: {plan.connections} connections for {plan.duration:g} s")
    cpu, busy, used = load.CpuMeter(pid), load.CoreMeter(cores), load.cpu_seconds(pid)
    body = load.chat_body(MODEL, False)
    throughput = load.throughput(target, body, plan.connections, plan.duration, client_cpu, python=not use_wrk)
    used = load.cpu_seconds(pid) - used
    throughput |= {
        "target_cpu_percent": cpu.percent(),
        "cores_busy_percent": busy.percent(),
        "target_cpu_s": round(used, 3),
        "target_cpu_us_per_request": round(1e6 * used / throughput["requests"], 1) if throughput["requests"] else None,
    }
    say(f"  streams: {plan.streams} of {plan.chunks} chunks every {plan.interval_ms:g} ms")
    busy, used = load.CoreMeter(cores), load.cpu_seconds(pid)
    streams = asyncio.run(load.run_streams(
        target, load.chat_body(MODEL, True), plan.streams, plan.ramp_s, plan.stream_timeout, pid
    ))
    used = load.cpu_seconds(pid) - used
    streams |= {
        "cores_busy_percent": busy.percent(),
        "target_cpu_s": round(used, 3),
        "target_cpu_ms_per_stream": round(1e3 * used / streams["completed"], 3) if streams["completed"] else None,
    }
    return {"latency": latency, "throughput": throughput, "streams": streams}


def rss_growth_mib(side: dict[str, Any]) -> float:
    """Memory a target took on while the streams were open: peak minus before, MiB."""
    rss = side["streams"].get("rss_kb", {})
    return round((rss.get("peak_kb", 0) - rss.get("start_kb", 0)) / 1024, 1)


def added(direct: dict[str, Any], via: dict[str, Any], own_cost: bool = False) -> dict[str, Any]:
    """What `via` costs over `direct`: milliseconds added, throughput change in percent.

    With `own_cost` (both sides are relays, not the mock) also the difference in CPU per request,
    CPU per stream and memory taken on during the streams.
    """
    def diff(section: str, metric: str, q: str) -> float | None:
        a, b = direct[section][metric].get(q), via[section][metric].get(q)
        return None if a is None or b is None else round(b - a, 3)

    def minus(section: str, metric: str) -> float | None:
        a, b = direct[section].get(metric), via[section].get(metric)
        return None if a is None or b is None else round(b - a, 3)

    rps_a, rps_b = direct["throughput"]["rps"], via["throughput"]["rps"]
    found = {
        "latency_p50_ms": diff("latency", "latency_ms", "p50"),
        "latency_p99_ms": diff("latency", "latency_ms", "p99"),
        "ttft_p50_ms": diff("streams", "ttft_ms", "p50"),
        "ttft_p99_ms": diff("streams", "ttft_ms", "p99"),
        "gap_p50_ms": diff("streams", "gap_ms", "p50"),
        "gap_p99_ms": diff("streams", "gap_ms", "p99"),
        "throughput_change_percent": round(100 * (rps_b - rps_a) / rps_a, 1) if rps_a else None,
    }
    if own_cost:
        found |= {
            "cpu_us_per_request": minus("throughput", "target_cpu_us_per_request"),
            "cpu_ms_per_stream": minus("streams", "target_cpu_ms_per_stream"),
            "rss_growth_mib": round(rss_growth_mib(via) - rss_growth_mib(direct), 1),
        }
    return found


def fmt(value: Any, signed: bool = False) -> str:
    """A figure for the table: numbers to at most two decimals, a dash for missing ones."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.2f}" if signed else f"{value:.2f}"
    return f"{value:+d}" if signed and isinstance(value, int) else str(value)


def columns(result: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """The measured targets (direct, minimal relay if run, gateway) and the differences shown."""
    name = "gateway" if result["target"] == "gateway" else "stand-in mock"
    targets = [("direct", result["direct"])]
    diffs = [("added", result["added"])]
    if "minimal_relay" in result:
        targets.append(("minimal relay", result["minimal_relay"]))
        diffs.append(("over relay", result["gateway_over_relay"]))
    targets.append((name, result["gateway"]))
    return targets, diffs


def markdown(result: dict[str, Any]) -> str:
    """The report table: direct, (minimal relay,) through the gateway, and what the gateway adds."""
    plan = result["plan"]
    targets, diffs = columns(result)
    relays = targets[1:]

    def row(label: str, values: list[Any], extras: list[Any] | None = None) -> str:
        extras = extras or [None] * len(diffs)
        return "| " + " | ".join([label, *(fmt(v) for v in values), *(fmt(e, signed=True) for e in extras)]) + " |"

    def q(section: str, metric: str, p: str) -> list[Any]:
        return [side[section][metric].get(p) for _, side in targets]

    def a(key: str) -> list[Any]:
        return [d.get(key) for _, d in diffs]

    def own(value: Any) -> list[Any]:
        """A figure of the relaying processes only (the direct column would be the mock's)."""
        return [None, *(value(side) for _, side in relays)]

    def rss(side: dict[str, Any]) -> str:
        kb = side["streams"].get("rss_kb", {})
        return f"{kb.get('start_kb', 0) / 1024:.1f} / {kb.get('peak_kb', 0) / 1024:.1f}"

    def cpu(side: dict[str, Any]) -> str:
        return f"{fmt(side['throughput']['target_cpu_percent'])} / {fmt(side['streams']['cpu_percent'])}"

    def pct(value: float | None) -> str | None:
        return None if value is None else f"{value:+.1f}%"

    gateway = result["gateway"]
    lines = [
        "| Measure | " + " | ".join(n for n, _ in targets) + " | " + " | ".join(n for n, _ in diffs) + " |",
        "| --- |" + " ---: |" * (len(targets) + len(diffs)),
        row("Latency p50, 1 connection (ms)", q("latency", "latency_ms", "p50"), a("latency_p50_ms")),
        row("Latency p99, 1 connection (ms)", q("latency", "latency_ms", "p99"), a("latency_p99_ms")),
        row(f"Throughput, {plan['connections']} connections (req/s)", [s["throughput"]["rps"] for _, s in targets],
            [pct(v) for v in a("throughput_change_percent")]),
        row(f"Stream TTFT p50, {plan['streams']} streams (ms)", q("streams", "ttft_ms", "p50"), a("ttft_p50_ms")),
        row("Stream TTFT p99 (ms)", q("streams", "ttft_ms", "p99"), a("ttft_p99_ms")),
        row(f"Inter-chunk gap p50, nominal {plan['interval_ms']:g} ms (ms)", q("streams", "gap_ms", "p50"),
            a("gap_p50_ms")),
        row("Inter-chunk gap p99 (ms)", q("streams", "gap_ms", "p99"), a("gap_p99_ms")),
        row("Streams completed / errors", [f"{s['streams']['completed']} / {s['streams']['errors']}"
                                           for _, s in targets]),
        row("Streams open at once (peak)", [s["streams"]["peak_open"] for _, s in targets]),
        row("RSS before / peak during streams (MiB)", own(rss),
            [rss_growth_mib(gateway), *a("rss_growth_mib")[1:]]),
        row("CPU, throughput / streams (% of a core)", own(cpu)),
        row("CPU per request, throughput (µs)", own(lambda s: s["throughput"].get("target_cpu_us_per_request")),
            [None, *a("cpu_us_per_request")[1:]]),
        row("CPU per stream, streams (ms)", own(lambda s: s["streams"].get("target_cpu_ms_per_stream")),
            [None, *a("cpu_ms_per_stream")[1:]]),
        row("Cores busy during streams (%)", [busy(s["streams"]) for _, s in targets]),
    ]
    notes = [f"- {w}" for w in warnings(result)]
    return "\n".join(lines + ([""] + notes if notes else []))


def busy(phase: dict[str, Any]) -> str:
    """Per-core busy percentages of a phase, as "cpu0 12 / cpu1 80"."""
    return " / ".join(f"{core} {pct:.0f}" for core, pct in phase.get("cores_busy_percent", {}).items()) or "-"


def warnings(result: dict[str, Any]) -> list[str]:
    """What makes figures suspect: errors, a saturated client core, other work on the gateway's core."""
    notes = []
    gw_core, client_core = (f"cpu{c}" for c in (result["pinning"]["gateway_cpu"], result["pinning"]["client_cpu"]))
    sides = [side for side in ("direct", "minimal_relay", "gateway") if side in result]
    for side in sides:
        streams, throughput = result[side]["streams"], result[side]["throughput"]
        label = side.replace("_", " ")
        if streams["errors"] or throughput["non_2xx"] or throughput["socket_errors"]:
            notes.append(f"{label}: {streams['errors']} failed streams, {throughput['non_2xx']} non-2xx and "
                         f"{throughput['socket_errors']} socket errors under throughput load")
        if streams.get("cores_busy_percent", {}).get(client_core, 0) > 90:
            notes.append(f"{label}: the client core ({client_core}: mock and driver) was saturated during the "
                         "streams, so its TTFT and gaps include client-side queueing; try fewer --streams or a "
                         "longer --interval-ms")
        if side == "direct":
            continue
        if throughput.get("cores_busy_percent", {}).get(client_core, 0) > 90:
            notes.append(f"the client core ({client_core}) was saturated during the {label}'s throughput run: "
                         "that req/s is a floor, not its ceiling")
        own_cpu = {"throughput": throughput.get("target_cpu_percent"), "streams": streams.get("cpu_percent")}
        for phase, own in own_cpu.items():
            core = result[side][phase].get("cores_busy_percent", {}).get(gw_core)
            if core is not None and own is not None and core - own > OTHER_WORK_POINTS:
                notes.append(f"{label}, {phase}: {gw_core} was {core:.0f}% busy and the {label} used {own:.0f}% of a "
                             "core: other work shared its core, so these figures are noisy")
    idle_busy = max(result["direct"][phase].get("cores_busy_percent", {}).get(gw_core, 0)
                    for phase in ("throughput", "streams"))
    if idle_busy > 20:
        notes.append(f"{gw_core} was up to {idle_busy:.0f}% busy while the gateway was idle (direct run): other "
                     "processes (or the kernel's network work) share the gateway's core, so the figures are noisy")
    return notes


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "runner_python": sys.executable, "kernel": platform.release()}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the tree had uncommitted changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so the cleanup in `finally` blocks runs."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    """The command line and the load plan it implies (--quick shrinks the defaults)."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run to check the set-up (about 30 s)")
    p.add_argument("--out", type=Path, default=None, help="JSON file [bench/results/<UTC time>.json]")
    p.add_argument("--requests", type=int, help="latency: timed sequential requests [3000; quick 500]")
    p.add_argument("--warmup", type=int, help="latency: untimed requests first [200; quick 50]")
    p.add_argument("--connections", type=int, default=50, help="throughput: connections [50]")
    p.add_argument("--duration", type=float, help="throughput: seconds [10; quick 3]")
    p.add_argument("--streams", type=int, help="concurrent streams [1000; quick 200]")
    p.add_argument("--chunks", type=int, help="chunks (tokens) per answer [20; quick 10]")
    p.add_argument("--interval-ms", type=float, default=500.0, help="gap between stream chunks at the mock [500]")
    p.add_argument("--ramp-s", type=float, help="start the streams evenly over this many seconds [5; quick 1]")
    p.add_argument("--gateway-cpu", type=int, default=0, help="core for the gateway [0]")
    p.add_argument("--client-cpu", type=int, default=1, help="core for the mock and the load drivers [1]")
    p.add_argument("--python-throughput", action="store_true", help="use the Python driver, not wrk")
    p.add_argument("--stand-in", action="store_true",
                   help="put a second mock where the gateway goes (checks the harness; no gateway figures)")
    p.add_argument("--limits", choices=("off", "local", "redis"), default="off",
                   help="admit every call through the limiter: in-process, or shared through a redis-server "
                        "started on the client's core (with the shared key cache) [off]")
    p.add_argument("--baseline", action="store_true",
                   help="also measure bench.minimal_relay (bare Tornado + pycurl) on the gateway's core")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--python", default=None, metavar="PATH",
                       help="interpreter that runs the gateway and the minimal relay [this one]")
    which.add_argument("--python-venv", type=Path, default=None, metavar="DIR",
                       help=f"use DIR/bin/python; if DIR is missing, make it as a venv of {VENV_BASE} and "
                            f"install {' '.join(VENV_PACKAGES)} into it")
    args = p.parse_args(argv)
    quick = args.quick

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    plan = Plan(
        requests=pick(args.requests, 3000, 500),
        warmup=pick(args.warmup, 200, 50),
        connections=args.connections,
        duration=pick(args.duration, 10.0, 3.0),
        streams=pick(args.streams, 1000, 200),
        chunks=pick(args.chunks, 20, 10),
        interval_ms=args.interval_ms,
        ramp_s=pick(args.ramp_s, 5.0, 1.0),
    )
    return args, plan


def run(args: argparse.Namespace, plan: Plan, workdir: Path) -> dict[str, Any]:
    """Start the servers, measure every target, and return every figure."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    gw_cpu, client_cpu = (args.gateway_cpu, args.client_cpu) if pinned else (None, None)
    if not pinned:
        say("fewer than two cores or no taskset: nothing is pinned, figures mix gateway and client work")
    python = gateway_python(args)
    interpreter = describe_python(python)
    say(python_summary(interpreter))
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    fd_limit = load.raise_fd_limit()
    if fd_limit < plan.streams * 2 + 200:
        raise BenchError(f"open-files limit {fd_limit} is too low for {plan.streams} streams through a proxy")
    use_wrk = not args.python_throughput and ensure_wrk()
    cores = sorted(c for c in (gw_cpu, client_cpu) if c is not None)
    children = Children(workdir)
    baseline = None
    try:
        mock, mock_port = start_mock(children, plan, client_cpu, "mock")
        if args.baseline:
            relay, relay_port = start_relay(children, python, mock_port, plan, gw_cpu)
            say(f"minimal relay on 127.0.0.1:{relay_port} (cpu {gw_cpu})")
        if args.stand_in:
            gateway, gw_port = start_mock(children, plan, gw_cpu, "stand-in")
            key = None
        else:
            redis_url = start_redis(children, client_cpu) if args.limits == "redis" else ""
            gateway, gw_port, key = start_gateway(children, python, workdir, mock_port, plan, gw_cpu, args.limits,
                                                  redis_url)
        say(f"mock on 127.0.0.1:{mock_port} (cpu {client_cpu}), "
            f"{'stand-in' if args.stand_in else 'gateway'} on 127.0.0.1:{gw_port} (cpu {gw_cpu})")
        say("direct to the mock:")
        direct = measure(load.Target("127.0.0.1", mock_port), plan, mock.pid, client_cpu, use_wrk, cores)
        if args.baseline:
            say("through the minimal relay:")
            baseline = measure(load.Target("127.0.0.1", relay_port), plan, relay.pid, client_cpu, use_wrk, cores)
        say("through the gateway:" if not args.stand_in else "through the stand-in:")
        via = measure(load.Target("127.0.0.1", gw_port, key=key), plan, gateway.pid, client_cpu, use_wrk, cores)
    finally:
        children.stop_all()
    result = {
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "started": started,
        "target": "stand-in" if args.stand_in else "gateway",
        "machine": machine(),
        "git": git_state(),
        "plan": dataclasses.asdict(plan),
        "pinning": {"gateway_cpu": gw_cpu, "client_cpu": client_cpu},
        "throughput_driver": "wrk" if use_wrk else "python",
        "gateway_python": interpreter,
        "direct": direct,
    }
    if baseline is not None:
        result |= {
            "minimal_relay": baseline,
            "minimal_relay_added": added(direct, baseline),
            "gateway_over_relay": added(baseline, via, own_cost=True),
        }
    return result | {"gateway": via, "added": added(direct, via)}


def main(argv: list[str] | None = None) -> int:
    """Entry point: run, print the table, write the JSON."""
    args, plan = parse_args(argv)
    out = args.out or REPO / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}.json"
    try:
        with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmp:
            result = run(args, plan, Path(tmp))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['command']}  ({result['started']}, {result['machine']['cpus']} cpus, "
          f"commit {str(result['git']['commit'])[:12]}{' dirty' if result['git']['dirty'] else ''})")
    print(python_summary(result["gateway_python"]) + "\n")
    print(markdown(result))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
