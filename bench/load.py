"""Load drivers for the benchmark: sequential latency, throughput, and many concurrent streams.

Each driver talks plain HTTP/1.1 on loopback with the standard library only, so what it measures
is the server, not a client library:

- `sequential_latency`: one keep-alive connection (http.client), requests one after another,
  every one timed; exact percentiles.
- `wrk_throughput`: req/s from `wrk` with a Lua script for the POST; `closed_loop` is the pure
  Python fallback (asyncio, N keep-alive connections, each sending its next request as soon as
  the last answer is complete), slower as a client, so its ceiling is lower.
- `run_streams`: C streaming requests over raw asyncio connections, started evenly over a ramp;
  for each, time to first token (first complete ``data: {...}`` event, counted from just before
  connecting) and every gap between consecutive events. ``data: [DONE]`` is not an event here.

`python -m bench.load {latency,throughput,streams} --url http://127.0.0.1:8000 [--key K]` runs one
driver and prints its result as JSON; `python -m bench.run` runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

PROMPT = "Say hello in one short sentence."
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where requests go: host, port, path and the headers every request carries."""

    host: str
    port: int
    path: str = "/v1/chat/completions"
    key: str | None = None

    @classmethod
    def from_url(cls, url: str, key: str | None = None, path: str = "/v1/chat/completions") -> Target:
        """A target from a base URL like http://127.0.0.1:8000."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"{url!r}: give http://host:port")
        return cls(parts.hostname, parts.port, path, key)

    @property
    def url(self) -> str:
        """The full URL of the path."""
        return f"http://{self.host}:{self.port}{self.path}"

    def headers(self) -> dict[str, str]:
        """Content type and, if there is a key, the bearer token."""
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def raw_request(self, body: bytes, close: bool) -> bytes:
        """The whole HTTP/1.1 request, built once and sent as is."""
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in self.headers().items()]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat_body(model: str, stream: bool) -> bytes:
    """The benchmark's request: a one-line chat prompt; the mock decides the answer's length."""
    return json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}).encode()


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolated between ranks."""
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Count, p50, p90, p99, mean and max of durations in seconds, reported in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50) * 1e3, 3),
        "p90": round(percentile(ordered, 90) * 1e3, 3),
        "p99": round(percentile(ordered, 99) * 1e3, 3),
        "mean": round(sum(ordered) / len(ordered) * 1e3, 3),
        "max": round(ordered[-1] * 1e3, 3),
    }


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS), in KiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU use of a process over a span, as a percentage of one core."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu = cpu_seconds(pid) if pid else 0.0
        self.wall = time.perf_counter()

    def percent(self) -> float | None:
        """Percent of one core since construction (None without a process)."""
        if not self.pid:
            return None
        wall = time.perf_counter() - self.wall
        return round(100 * (cpu_seconds(self.pid) - self.cpu) / wall, 1) if wall > 0 else None


class CoreMeter:
    """How busy some CPU cores were over a span (from /proc/stat), to show a saturated side."""

    def __init__(self, cores: Sequence[int]) -> None:
        self.cores = list(cores)
        self.start = self.read()

    def read(self) -> dict[int, tuple[int, int]]:
        """(busy, total) jiffies per watched core."""
        found = {}
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cores:
                    ticks = [int(v) for v in values]
                    idle = ticks[3] + ticks[4]
                    found[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
        return found

    def percent(self) -> dict[str, float]:
        """Busy percent per core since construction, keyed "cpu<N>"."""
        now = self.read()
        busy = {}
        for core, (b1, t1) in now.items():
            b0, t0 = self.start.get(core, (b1, t1))
            busy[f"cpu{core}"] = round(100 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
        return busy


def sequential_latency(target: Target, body: bytes, requests: int, warmup: int) -> dict[str, Any]:
    """Time `requests` POSTs one after another on one keep-alive connection, after `warmup` untimed."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=30)
    headers = target.headers()
    times: list[float] = []
    errors = 0
    try:
        for i in range(warmup + requests):
            start = time.perf_counter()
            try:
                conn.request("POST", target.path, body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                ok = False
            elapsed = time.perf_counter() - start
            if i < warmup:
                continue
            if ok:
                times.append(elapsed)
            else:
                errors += 1
    finally:
        conn.close()
    return {"requests": requests, "errors": errors, "latency_ms": summary_ms(times)}


def wrk_throughput(
    target: Target, body: bytes, connections: int, duration: float, cpu: int | None = None
) -> dict[str, Any]:
    """Requests per second from wrk (one thread, pinned to `cpu` if given), with its latency spread."""
    script = "wrk.method = 'POST'\nwrk.body = [==[" + body.decode() + "]==]\n"
    script += "".join(f"wrk.headers['{k}'] = '{v}'\n" for k, v in target.headers().items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s", "-s", f.name,
           target.url]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    finally:
        os.unlink(f.name)
    return parse_wrk(out) | {"driver": "wrk", "connections": connections, "duration_s": duration}


def parse_wrk(out: str) -> dict[str, Any]:
    """The figures of a `wrk --latency` report: req/s, completed requests, errors, latency spread."""
    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else 0.0

    latency = {
        f"p{q}": round(float(v) * WRK_UNITS[unit], 3)
        for q, v, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "requests": int(number(r"(\d+) requests in")),
        "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)")),
        "socket_errors": sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        "latency_ms": latency,
    }


class ResponseParser:
    """An incremental HTTP/1.1 response reader: status, framing (length, chunked, close), SSE events.

    `event_times` holds, for an event stream, the arrival time of every complete ``data: {`` event.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.status = 0
        self.head_done = False
        self.remaining: int | None = None
        self.chunked = False
        self.chunk_left = 0
        self.skip = 0
        self.trailer = False
        self.sse: bytearray | None = None
        self.event_times: list[float] = []
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        """Take the next bytes from the socket, read at time `now`."""
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.read_head(bytes(self.buf[:end]).decode("latin-1"))
            del self.buf[: end + 4]
        if self.chunked:
            self.read_chunks(now)
        else:
            self.read_plain(now)

    def read_head(self, head: str) -> None:
        """Status and the fields that decide how the body is framed and whether it is SSE."""
        lines = head.split("\r\n")
        self.status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        if "content-length" in fields and not self.chunked:
            self.remaining = int(fields["content-length"])
        if fields.get("content-type", "").startswith("text/event-stream"):
            self.sse = bytearray()
        self.head_done = True
        if self.remaining == 0:
            self.done = True

    def read_plain(self, now: float) -> None:
        """A body framed by Content-Length, or by the connection closing."""
        take = len(self.buf) if self.remaining is None else min(self.remaining, len(self.buf))
        self.content(self.buf[:take], now)
        del self.buf[:take]
        if self.remaining is not None:
            self.remaining -= take
            self.done = self.remaining == 0

    def read_chunks(self, now: float) -> None:
        """A chunked body: sizes, data, CRLFs and the trailer, any of them split across reads."""
        while not self.done:
            if self.chunk_left:
                take = min(self.chunk_left, len(self.buf))
                if not take:
                    return
                self.content(self.buf[:take], now)
                del self.buf[:take]
                self.chunk_left -= take
                if self.chunk_left:
                    return
                self.skip = 2
            if self.skip:
                dropped = min(self.skip, len(self.buf))
                del self.buf[:dropped]
                self.skip -= dropped
                if self.skip:
                    return
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            if self.trailer:
                del self.buf[: end + 2]
                self.done = end == 0
                continue
            size = int(bytes(self.buf[:end]).split(b";")[0], 16)
            del self.buf[: end + 2]
            self.chunk_left = size
            self.trailer = size == 0

    def content(self, data: bytearray, now: float) -> None:
        """Body bytes: for an event stream, note when each complete JSON data event arrived."""
        if self.sse is None:
            return
        self.sse += data
        while (end := self.sse.find(b"\n\n")) >= 0:
            if self.sse.startswith(b"data: {"):
                self.event_times.append(now)
            del self.sse[: end + 2]

    def closed(self) -> None:
        """The server closed the connection: that ends a body framed by the close."""
        if self.head_done and self.remaining is None and not self.chunked:
            self.done = True


class OneShot(asyncio.Protocol):
    """One request on its own connection, read to the end."""

    def __init__(self, request: bytes, counter: Counter) -> None:
        self.request = request
        self.counter = counter
        self.parser = ResponseParser()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counter.opened()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data, time.perf_counter())
        if self.parser.done and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counter.closed()
        self.parser.closed()
        if not self.finished.done():
            self.finished.set_result(None)


class Counter:
    """How many connections are open now, and the most at any moment."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0

    def opened(self) -> None:
        """A connection is up."""
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        """A connection is gone."""
        self.open -= 1


async def watch_rss(pid: int, into: dict[str, int], period: float = 0.1) -> None:
    """Keep the peak VmRSS of `pid` in into["peak_kb"] until cancelled."""
    while True:
        into["peak_kb"] = max(into.get("peak_kb", 0), rss_kb(pid))
        await asyncio.sleep(period)


async def run_streams(
    target: Target,
    body: bytes,
    concurrency: int,
    ramp_s: float,
    timeout_s: float,
    watch_pid: int | None = None,
) -> dict[str, Any]:
    """Open `concurrency` streams, started evenly over `ramp_s`; time first token and every gap."""
    loop = asyncio.get_running_loop()
    request = target.raw_request(body, close=True)
    counter = Counter()
    rss: dict[str, int] = {"start_kb": rss_kb(watch_pid)} if watch_pid else {}
    watcher = loop.create_task(watch_rss(watch_pid, rss)) if watch_pid else None
    cpu = CpuMeter(watch_pid)
    t0 = time.perf_counter()
    deadline = t0 + ramp_s + timeout_s

    async def one(i: int) -> tuple[float, ResponseParser | None]:
        await asyncio.sleep(i * ramp_s / concurrency)
        start = time.perf_counter()
        proto = OneShot(request, counter)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: proto, target.host, target.port), deadline - start)
            await asyncio.wait_for(proto.finished, deadline - time.perf_counter())
        except (OSError, TimeoutError):
            if proto.transport is not None:
                proto.transport.abort()
            return start, None
        return start, proto.parser

    try:
        results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    finally:
        if watcher:
            watcher.cancel()
    wall = time.perf_counter() - t0
    ttft: list[float] = []
    gaps: list[float] = []
    completed = errors = 0
    events = []
    for start, parser in results:
        good = parser is not None and parser.status == 200 and parser.done and bool(parser.event_times)
        if not good or parser is None:
            errors += 1
            continue
        completed += 1
        times = parser.event_times
        events.append(len(times))
        ttft.append(times[0] - start)
        gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))
    result: dict[str, Any] = {
        "streams": concurrency,
        "completed": completed,
        "errors": errors,
        "peak_open": counter.peak,
        "events_per_stream": [min(events), max(events)] if events else [],
        "wall_s": round(wall, 3),
        "ttft_ms": summary_ms(ttft),
        "gap_ms": summary_ms(gaps),
    }
    if watch_pid:
        result["rss_kb"] = rss | {"end_kb": rss_kb(watch_pid)}
        result["cpu_percent"] = cpu.percent()
    return result


class KeepAlive(asyncio.Protocol):
    """A client that sends its next request as soon as the previous answer is complete."""

    def __init__(self, request: bytes, stop_at: float, tally: dict[str, Any]) -> None:
        self.request = request
        self.stop_at = stop_at
        self.tally = tally
        self.parser = ResponseParser()
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        """The next request, with a fresh parser for its answer."""
        self.parser = ResponseParser()
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.parser.feed(data, now)
        if not self.parser.done:
            return
        if self.parser.status == 200:
            self.tally["times"].append(now - self.sent)
        else:
            self.tally["errors"] += 1
        if now < self.stop_at:
            self.send()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def closed_loop(target: Target, body: bytes, connections: int, duration: float) -> dict[str, Any]:
    """Throughput without wrk: `connections` keep-alive clients for `duration` seconds."""
    loop = asyncio.get_running_loop()
    request = target.raw_request(body, close=False)
    tally: dict[str, Any] = {"times": [], "errors": 0}
    start = time.perf_counter()
    stop_at = start + duration
    protos = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: KeepAlive(request, stop_at, tally), target.host, target.port)
        protos.append(proto)
    done, pending = await asyncio.wait([p.finished for p in protos], timeout=duration + 30)
    for proto in protos:
        if proto.transport is not None:
            proto.transport.abort()
    wall = time.perf_counter() - start
    times = tally["times"]
    return {
        "driver": "python",
        "connections": connections,
        "duration_s": duration,
        "rps": round(len(times) / wall, 1),
        "requests": len(times),
        "non_2xx": tally["errors"],
        "socket_errors": len(pending),
        "latency_ms": {k: v for k, v in summary_ms(times).items() if k in ("p50", "p90", "p99")},
    }


def throughput(target: Target, body: bytes, connections: int, duration: float, cpu: int | None,
               python: bool = False) -> dict[str, Any]:
    """wrk when installed (and not refused), else the Python closed loop."""
    if not python and shutil.which("wrk"):
        return wrk_throughput(target, body, connections, duration, cpu)
    return asyncio.run(closed_loop(target, body, connections, duration))


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.load`: one driver against one server, result as JSON on stdout."""
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("driver", choices=("latency", "throughput", "streams"))
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--key", default=None, help="bearer key, if the server wants one")
    p.add_argument("--model", default="mock-model")
    p.add_argument("--requests", type=int, default=3000, help="latency: timed requests [3000]")
    p.add_argument("--warmup", type=int, default=200, help="latency: untimed requests first [200]")
    p.add_argument("--connections", type=int, default=50, help="throughput: connections [50]")
    p.add_argument("--duration", type=float, default=10.0, help="throughput: seconds [10]")
    p.add_argument("--python", action="store_true", help="throughput: the Python driver even if wrk is there")
    p.add_argument("--concurrency", type=int, default=1000, help="streams: how many [1000]")
    p.add_argument("--ramp-s", type=float, default=5.0, help="streams: start them over this many seconds [5]")
    p.add_argument("--timeout-s", type=float, default=60.0, help="streams: give up after this [60]")
    p.add_argument("--pid", type=int, default=None, help="streams: process whose RSS and CPU to watch")
    args = p.parse_args(argv)
    target = Target.from_url(args.url, args.key)
    drivers: dict[str, Callable[[], dict[str, Any]]] = {
        "latency": lambda: sequential_latency(target, chat_body(args.model, False), args.requests, args.warmup),
        "throughput": lambda: throughput(target, chat_body(args.model, False), args.connections, args.duration,
                                         None, args.python),
        "streams": lambda: asyncio.run(run_streams(target, chat_body(args.model, True), args.concurrency,
                                                   args.ramp_s, args.timeout_s, args.pid)),
    }
    raise_fd_limit()
    print(json.dumps(drivers[args.driver](), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
