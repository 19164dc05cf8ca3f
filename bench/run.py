"""`python -m bench.run`: the gateway against going direct to the mock upstream, in one report.

It starts the mock upstream and the gateway from this repository on loopback (the gateway pinned
to one core, the mock and the load drivers to another), makes a key, then measures each target
the same way: latency of sequential requests on one connection, throughput at 50 connections,
and many concurrent streams (time to first token, inter-chunk gaps, the gateway's peak RSS).
It prints a Markdown table (direct, gateway, added) and writes the figures as JSON. Every child
runs in its own session and is stopped on exit, Ctrl-C or SIGTERM included.
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
from pathlib import Path
from typing import Any

from . import load

REPO = Path(__file__).resolve().parent.parent
MODEL = "mock-model"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


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
    proc = children.start(name, cmd, cpu, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("READY "):
        raise BenchError(f"{name} did not start:\n{children.log_tail(name)}")
    return proc, int(line.split()[1])


def gateway_config(workdir: Path, port: int, mock_port: int, plan: Plan) -> Path:
    """A throw-away gateway config: SQLite store and usage spool in the work directory."""
    path = workdir / "gateway.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndrain_seconds = 1\n\n'
        f"[upstream]\nmax_clients = {max(1000, plan.streams + 50)}\n\n"
        f'[store]\nurl = "sqlite:///{workdir}/gateway.db"\n\n'
        f'[usage]\nspool_dir = "{workdir}/spool"\n\n'
        f'[[models]]\nid = "{MODEL}"\nupstreams = ["http://127.0.0.1:{mock_port}"]\n',
        encoding="utf-8",
    )
    return path


def start_gateway(
    children: Children, workdir: Path, mock_port: int, plan: Plan, cpu: int | None
) -> tuple[subprocess.Popen, int, str]:
    """The gateway from this repository, with a fresh key; waits for GET /healthz to answer 200."""
    port = free_port()
    config = gateway_config(workdir, port, mock_port, plan)
    made = subprocess.run(
        [sys.executable, "-m", "llmgateway", "keys", "create", "--config", str(config), "--user", "bench",
         "--name", "bench"],
        cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT,
    )
    key = made.stdout.strip()
    if made.returncode != 0 or not key:
        raise BenchError(f"could not create a gateway key:\n{made.stderr.strip()}")
    proc = children.start("gateway", [sys.executable, "-m", "llmgateway", "serve", "--config", str(config)], cpu)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the gateway exited with status {proc.returncode}:\n{children.log_tail('gateway')}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer,
        ):
            if answer.status == 200:
                return proc, port, key
        time.sleep(0.1)
    raise BenchError(f"the gateway did not answer /healthz in {START_TIMEOUT:g} s:\n{children.log_tail('gateway')}")


def ensure_wrk() -> bool:
    """wrk on PATH, installing the Debian package if missing and possible; False means the Python driver."""
    if shutil.which("wrk"):
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
    return shutil.which("wrk") is not None


def measure(
    target: load.Target, plan: Plan, pid: int, client_cpu: int | None, use_wrk: bool, cores: list[int]
) -> dict[str, Any]:
    """Latency, throughput and streams against one target; `pid` is the process to watch."""
    say(f"  latency: {plan.requests} sequential requests after {plan.warmup} warm-up")
    latency = load.sequential_latency(target, load.chat_body(MODEL, False), plan.requests, plan.warmup)
    say(f"  throughput: {plan.connections} connections for {plan.duration:g} s")
    cpu, busy = load.CpuMeter(pid), load.CoreMeter(cores)
    body = load.chat_body(MODEL, False)
    throughput = load.throughput(target, body, plan.connections, plan.duration, client_cpu, python=not use_wrk)
    throughput |= {"target_cpu_percent": cpu.percent(), "cores_busy_percent": busy.percent()}
    say(f"  streams: {plan.streams} of {plan.chunks} chunks every {plan.interval_ms:g} ms")
    busy = load.CoreMeter(cores)
    streams = asyncio.run(load.run_streams(
        target, load.chat_body(MODEL, True), plan.streams, plan.ramp_s, plan.stream_timeout, pid
    ))
    streams["cores_busy_percent"] = busy.percent()
    return {"latency": latency, "throughput": throughput, "streams": streams}


def added(direct: dict[str, Any], via: dict[str, Any]) -> dict[str, Any]:
    """What going through the gateway costs: milliseconds added, throughput change in percent."""
    def diff(section: str, metric: str, q: str) -> float | None:
        a, b = direct[section][metric].get(q), via[section][metric].get(q)
        return None if a is None or b is None else round(b - a, 3)

    rps_a, rps_b = direct["throughput"]["rps"], via["throughput"]["rps"]
    return {
        "latency_p50_ms": diff("latency", "latency_ms", "p50"),
        "latency_p99_ms": diff("latency", "latency_ms", "p99"),
        "ttft_p50_ms": diff("streams", "ttft_ms", "p50"),
        "ttft_p99_ms": diff("streams", "ttft_ms", "p99"),
        "gap_p50_ms": diff("streams", "gap_ms", "p50"),
        "gap_p99_ms": diff("streams", "gap_ms", "p99"),
        "throughput_change_percent": round(100 * (rps_b - rps_a) / rps_a, 1) if rps_a else None,
    }


def fmt(value: Any, signed: bool = False) -> str:
    """A figure for the table: numbers to at most two decimals, a dash for missing ones."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.2f}" if signed else f"{value:.2f}"
    return f"{value:+d}" if signed and isinstance(value, int) else str(value)


def markdown(result: dict[str, Any]) -> str:
    """The report table: direct, through the gateway, and what the gateway adds."""
    d, g, a = result["direct"], result["gateway"], result["added"]
    plan = result["plan"]
    name = "gateway" if result["target"] == "gateway" else "stand-in mock"

    def row(label: str, direct: Any, via: Any, extra: Any = None) -> str:
        return f"| {label} | {fmt(direct)} | {fmt(via)} | {fmt(extra, signed=True)} |"

    def q(section: str, metric: str, p: str) -> tuple[Any, Any]:
        return d[section][metric].get(p), g[section][metric].get(p)

    mib = 1024
    rss = g["streams"].get("rss_kb", {})
    change = a["throughput_change_percent"]
    lines = [
        f"| Measure | direct | {name} | added |",
        "| --- | ---: | ---: | ---: |",
        row("Latency p50, 1 connection (ms)", *q("latency", "latency_ms", "p50"), a["latency_p50_ms"]),
        row("Latency p99, 1 connection (ms)", *q("latency", "latency_ms", "p99"), a["latency_p99_ms"]),
        row(f"Throughput, {plan['connections']} connections (req/s)", d["throughput"]["rps"], g["throughput"]["rps"],
            None if change is None else f"{change:+.1f}%"),
        row(f"Stream TTFT p50, {plan['streams']} streams (ms)", *q("streams", "ttft_ms", "p50"), a["ttft_p50_ms"]),
        row("Stream TTFT p99 (ms)", *q("streams", "ttft_ms", "p99"), a["ttft_p99_ms"]),
        row(f"Inter-chunk gap p50, nominal {plan['interval_ms']:g} ms (ms)", *q("streams", "gap_ms", "p50"),
            a["gap_p50_ms"]),
        row("Inter-chunk gap p99 (ms)", *q("streams", "gap_ms", "p99"), a["gap_p99_ms"]),
        row("Streams completed / errors", f"{d['streams']['completed']} / {d['streams']['errors']}",
            f"{g['streams']['completed']} / {g['streams']['errors']}"),
        row("Streams open at once (peak)", d["streams"]["peak_open"], g["streams"]["peak_open"]),
        row(f"{name} RSS before / peak during streams (MiB)", None,
            f"{rss.get('start_kb', 0) / mib:.1f} / {rss.get('peak_kb', 0) / mib:.1f}",
            round((rss.get("peak_kb", 0) - rss.get("start_kb", 0)) / mib, 1)),
        row(f"{name} CPU, throughput / streams (% of a core)", None,
            f"{fmt(g['throughput']['target_cpu_percent'])} / {fmt(g['streams']['cpu_percent'])}"),
        row("Cores busy during streams (%)", busy(d["streams"]), busy(g["streams"])),
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
    for side in ("direct", "gateway"):
        streams, throughput = result[side]["streams"], result[side]["throughput"]
        if streams["errors"] or throughput["non_2xx"] or throughput["socket_errors"]:
            notes.append(f"{side}: {streams['errors']} failed streams, {throughput['non_2xx']} non-2xx and "
                         f"{throughput['socket_errors']} socket errors under throughput load")
        if streams.get("cores_busy_percent", {}).get(client_core, 0) > 90:
            notes.append(f"{side}: the client core ({client_core}: mock and driver) was saturated during the "
                         "streams, so its TTFT and gaps include client-side queueing; try fewer --streams or a "
                         "longer --interval-ms")
    direct_gw_core = result["direct"]["throughput"].get("cores_busy_percent", {}).get(gw_core, 0)
    if direct_gw_core > 20:
        notes.append(f"{gw_core} was {direct_gw_core:.0f}% busy while the gateway was idle: other processes (or "
                     "the kernel's network work) share the gateway's core, so the figures are noisy")
    if result["gateway"]["throughput"].get("cores_busy_percent", {}).get(client_core, 0) > 90:
        notes.append(f"the client core ({client_core}) was saturated during the gateway's throughput run: that "
                     "req/s is a floor, not the gateway's ceiling")
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
            "kernel": platform.release()}


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
    """Start the servers, measure both targets, and return every figure."""
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    gw_cpu, client_cpu = (args.gateway_cpu, args.client_cpu) if pinned else (None, None)
    if not pinned:
        say("fewer than two cores or no taskset: nothing is pinned, figures mix gateway and client work")
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    fd_limit = load.raise_fd_limit()
    if fd_limit < plan.streams * 2 + 200:
        raise BenchError(f"open-files limit {fd_limit} is too low for {plan.streams} streams through a proxy")
    use_wrk = not args.python_throughput and ensure_wrk()
    cores = sorted(c for c in (gw_cpu, client_cpu) if c is not None)
    children = Children(workdir)
    try:
        mock, mock_port = start_mock(children, plan, client_cpu, "mock")
        if args.stand_in:
            gateway, gw_port = start_mock(children, plan, gw_cpu, "stand-in")
            key = None
        else:
            gateway, gw_port, key = start_gateway(children, workdir, mock_port, plan, gw_cpu)
        say(f"mock on 127.0.0.1:{mock_port} (cpu {client_cpu}), "
            f"{'stand-in' if args.stand_in else 'gateway'} on 127.0.0.1:{gw_port} (cpu {gw_cpu})")
        say("direct to the mock:")
        direct = measure(load.Target("127.0.0.1", mock_port), plan, mock.pid, client_cpu, use_wrk, cores)
        say("through the gateway:" if not args.stand_in else "through the stand-in:")
        via = measure(load.Target("127.0.0.1", gw_port, key=key), plan, gateway.pid, client_cpu, use_wrk, cores)
    finally:
        children.stop_all()
    return {
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": "stand-in" if args.stand_in else "gateway",
        "machine": machine(),
        "git": git_state(),
        "plan": dataclasses.asdict(plan),
        "pinning": {"gateway_cpu": gw_cpu, "client_cpu": client_cpu},
        "throughput_driver": "wrk" if use_wrk else "python",
        "direct": direct,
        "gateway": via,
        "added": added(direct, via),
    }


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
          f"commit {str(result['git']['commit'])[:12]}{' dirty' if result['git']['dirty'] else ''})\n")
    print(markdown(result))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
