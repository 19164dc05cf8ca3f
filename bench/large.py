"""`python -m bench.large`: the gateway beside the bare relay on large prompts, in one run.

Chat bodies of a few sizes (4, 64 and 256 KB by default, plus 216 KB, the size of the issue that
asked for this), each relayed as a stream to three upstreams: one that sends a usage chunk (as
vLLM), one that sends none and has llama-cpp-python's tokenizer (so the gateway counts every call
with a usage probe afterwards), and a bare one with neither (as nginx serving a canned stream).
First the RSS of each with 1,000 streams of the 216 KB prompt open at once (fresh processes);
then for each size and upstream: the added p50 at one connection, req/s at 10 and 50
connections (wrk, gateway and relay alternating, `--rounds` of each), the CPU per request.

Everything runs on 127.0.0.1: two mock upstreams (`bench.mock_upstream`, one per kind) pinned to
core 1 with wrk and the stream driver; the gateway and `bench.minimal_relay` (one per mock) both
pinned to core 0. It prints a Markdown table and writes the figures as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import REPO, BenchError, Children, free_port, say, terminate_on_sigterm, wait_ready

from . import load

KINDS = {
    "usage": ("--usage-chunk", "on"),
    "no-usage": ("--usage-chunk", "off", "--tokenize", "llamacpp"),
    "bare": ("--usage-chunk", "off", "--usage-body", "off", "--tokenize", "none"),
}
TOKENS = 16


def model_id(kind: str) -> str:
    """The model a kind's mock serves. Not the kind itself: a model named `usage` would put
    `"usage"` in every chunk of its streams, which sends the gateway's meter to its slow path
    (looking for the usage object) on every chunk, where a real model name never does."""
    return f"{kind}-model"


def filler() -> str:
    """Prompt text like a code file in a RAG context: quotes, backslashes and newlines to escape."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "llmgateway").rglob("*.py")))


def chat_body(model: str, size: int, text: str, stream: bool = True, mock: dict | None = None) -> bytes:
    """A streaming chat request of about `size` bytes: a system line, then a user message of code."""
    head = {"model": model, "messages": [{"role": "system", "content": "Answer from the context."},
                                         {"role": "user", "content": ""}], "stream": stream}
    if mock:
        head["mock"] = mock
    empty = len(json.dumps(head))
    content, need = "", size - empty
    while len(json.dumps(content)) - 2 < need:
        content += text
    content = content[:need]
    while len(json.dumps(content)) - 2 > need:
        content = content[:need - (len(json.dumps(content)) - 2 - need)]
    head["messages"][1]["content"] = content
    return json.dumps(head).encode()


def json_costs(sizes: list[int], text: str) -> list[dict[str, Any]]:
    """µs per call, in this process, of what the gateway does to a body of each size: parse it
    (the standard library against orjson, and the gateway's read that leaves the prompt raw),
    write it again (the same), splice `stream_options` in."""
    import timeit

    import orjson

    from llmgateway.jsonbody import prepend_member
    from llmgateway.relay.requestbody import read_body

    rows = []
    for size_kb in sizes:
        raw = chat_body("m", size_kb * 1024, text)
        body = orjson.loads(raw)
        calls = {
            "json.loads": lambda raw=raw: json.loads(raw),
            "orjson.loads": lambda raw=raw: orjson.loads(raw),
            "read_body": lambda raw=raw: read_body(raw),
            "json.dumps": lambda body=body: json.dumps(body).encode(),
            "orjson.dumps": lambda body=body: orjson.dumps(body),
            "splice": lambda raw=raw: prepend_member(raw, "stream_options", {"include_usage": True}),
        }
        row: dict[str, Any] = {"size_kb": size_kb}
        for name, call in calls.items():
            number = max(20, 20_000 // size_kb)
            row[name] = round(min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6, 1)
        rows.append(row)
    return rows


def start_gateway(children: Children, workdir: Path, mocks: dict[str, int], cpu: int | None) -> tuple[Any, int, str]:
    """The gateway with one model per mock (`model_id` of its kind), a key; waits for /healthz."""
    import subprocess
    import time
    import urllib.request

    models = "".join(f'[[models]]\nid = "{model_id(kind)}"\nupstreams = ["http://127.0.0.1:{port}"]\n\n'
                     for kind, port in mocks.items())
    port = free_port()
    config = workdir / "gateway.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndrain_seconds = 1\nmax_body_bytes = {4 << 20}\n\n'
        f"[upstream]\nmax_clients = 1100\n\n"
        f'[store]\nurl = "sqlite:///{workdir}/gateway.db"\n\n[usage]\nspool_dir = "{workdir}/spool"\n\n{models}',
        encoding="utf-8")
    made = subprocess.run([sys.executable, "-m", "llmgateway", "keys", "create", "--config", str(config), "--user",
                           "bench", "--name", "bench"], cwd=REPO, capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        raise BenchError(f"could not create a key:\n{made.stderr}")
    proc = children.start("gateway", [sys.executable, "-m", "llmgateway", "serve", "--config", str(config)], cpu)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return proc, port, made.stdout.strip()
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"the gateway did not start:\n{children.log_tail('gateway')}")


def wrk(target: load.Target, pid: int, body: bytes, connections: int, duration: float, cpu: int | None) -> dict:
    """req/s and the target's CPU time per request over one wrk run."""
    used = load.cpu_seconds(pid)
    found = load.wrk_throughput(target, body, connections, duration, cpu)
    used = load.cpu_seconds(pid) - used
    good = found["requests"] - found["non_2xx"]
    return {"rps": found["rps"], "errors": found["non_2xx"] + found["socket_errors"],
            "cpu_us_per_request": round(1e6 * used / good, 1) if good else None}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load.raise_fd_limit()
    children = Children(workdir)
    pinned = not args.no_pin
    gw_cpu, client_cpu = (0, 1) if pinned else (None, None)
    try:
        mocks, relays = {}, {}
        for kind, flags in KINDS.items():
            cmd = [sys.executable, "-m", "bench.mock_upstream", "--listen", "127.0.0.1:0", "--tokens", str(TOKENS),
                   "--model-names", model_id(kind), *flags]
            mocks[kind] = wait_ready(children, f"mock-{kind}", children.start(f"mock-{kind}", cmd, client_cpu,
                                                                              stdout=-1))[1]
        for kind, port in mocks.items():
            cmd = [sys.executable, "-m", "bench.minimal_relay", "--listen", "127.0.0.1:0", "--upstream",
                   f"http://127.0.0.1:{port}", "--max-clients", "1100"]
            proc = children.start(f"relay-{kind}", cmd, gw_cpu, stdout=-1)
            relays[kind] = (proc.pid, wait_ready(children, f"relay-{kind}", proc)[1])
        gw_proc, gw_port, key = start_gateway(children, workdir, mocks, gw_cpu)
        text = filler()
        say("JSON costs in this process")
        costs = json_costs(args.sizes, text)
        streams = {}
        if args.streams:
            body = chat_body(model_id("no-usage"), 216 * 1024, text, mock={"interval_ms": 500, "tokens": 10})
            relay_pid, relay_port = relays["no-usage"]
            for name, pid, target in (("gateway", gw_proc.pid, load.Target("127.0.0.1", gw_port, key=key)),
                                      ("relay", relay_pid, load.Target("127.0.0.1", relay_port))):
                say(f"{args.streams} streams of 216 KB through the {name}")
                found = asyncio.run(load.run_streams(target, body, args.streams, 5.0, 60.0, pid))
                rss, peak_open = found["rss_kb"], max(found["peak_open"], 1)
                streams[name] = {"completed": found["completed"], "errors": found["errors"],
                                 "peak_open": found["peak_open"], "rss_before_mib": round(rss["start_kb"] / 1024, 1),
                                 "rss_peak_mib": round(rss["peak_kb"] / 1024, 1),
                                 "per_stream_kib": round((rss["peak_kb"] - rss["start_kb"]) / peak_open, 1)}
        rows = []
        for size_kb in args.sizes:
            for kind in KINDS:
                body = chat_body(model_id(kind), size_kb * 1024, text)
                targets = {"gateway": (gw_proc.pid, load.Target("127.0.0.1", gw_port, key=key)),
                           "relay": (relays[kind][0], load.Target("127.0.0.1", relays[kind][1]))}
                direct = load.Target("127.0.0.1", mocks[kind])
                row: dict[str, Any] = {"size_kb": size_kb, "upstream": kind, "body_bytes": len(body)}
                say(f"{size_kb} KB, {kind}: latency")
                row["p50_ms"] = {name: load.sequential_latency(t, body, args.requests, 20)["latency_ms"].get("p50")
                                 for name, t in (("direct", direct), *((n, t) for n, (_, t) in targets.items()))}
                for conns in (10, 50):
                    runs: dict[str, list[dict]] = {"gateway": [], "relay": []}
                    for _ in range(args.rounds):
                        for name, (pid, target) in targets.items():
                            say(f"{size_kb} KB, {kind}: {name}, {conns} connections")
                            runs[name].append(wrk(target, pid, body, conns, args.duration, client_cpu))
                    row[f"c{conns}"] = runs
                rows.append(row)
        return {"json_us": costs, "rows": rows, "streams": streams, "pinned": pinned, "duration_s": args.duration,
                "rounds": args.rounds, "python": sys.version.split()[0]}
    finally:
        children.stop_all()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def markdown(result: dict[str, Any]) -> str:
    lines = ["| Body | Upstream | p50 added, gateway / relay (ms) | req/s c10 gateway / relay (x) "
             "| req/s c50 gateway / relay (x) | CPU µs/req c50 gateway / relay |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        p50 = row["p50_ms"]
        cells = [f"{row['size_kb']} KB", row["upstream"],
                 f"+{p50['gateway'] - p50['direct']:.2f} / +{p50['relay'] - p50['direct']:.2f}"]
        for conns in (10, 50):
            g = median([r["rps"] for r in row[f"c{conns}"]["gateway"]])
            r = median([r["rps"] for r in row[f"c{conns}"]["relay"]])
            cells.append(f"{g:,.0f} / {r:,.0f} ({g / r:.2f}x)" if r else "-")
        g = median([r["cpu_us_per_request"] or 0 for r in row["c50"]["gateway"]])
        r = median([r["cpu_us_per_request"] or 0 for r in row["c50"]["relay"]])
        cells.append(f"{g:,.0f} / {r:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| Body | json.loads | orjson.loads | read_body | json.dumps | orjson.dumps | splice (µs) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in result["json_us"]:
        lines.append(f"| {c['size_kb']} KB | {c['json.loads']} | {c['orjson.loads']} | {c['read_body']} "
                     f"| {c['json.dumps']} | {c['orjson.dumps']} | {c['splice']} |")
    for name, s in result["streams"].items():
        lines.append(f"\n{name}: {s['completed']} of {s['peak_open']} streams open at once completed "
                     f"({s['errors']} errors); RSS {s['rss_before_mib']} MiB before, {s['rss_peak_mib']} MiB at "
                     f"peak, {s['per_stream_kib']} KiB per open stream")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[4, 64, 216, 256],
                   help="body sizes in KB, comma-separated [4,64,216,256]")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run [5]")
    p.add_argument("--rounds", type=int, default=2, help="wrk runs per target, alternating [2]")
    p.add_argument("--requests", type=int, default=200, help="sequential requests for the p50 [200]")
    p.add_argument("--streams", type=int, default=1000, help="concurrent 216 KB streams for the RSS; 0 skips [1000]")
    p.add_argument("--no-pin", action="store_true", help="do not pin the processes to cores")
    p.add_argument("--out", type=Path, default=None, help="JSON file [bench/results/large-<UTC time>.json]")
    args = p.parse_args(argv)
    for value in (args.duration, args.rounds, args.requests):
        if value <= 0:
            p.error("--duration, --rounds and --requests must be positive")
    if args.streams < 0 or not args.sizes or min(args.sizes) < 1:
        p.error("--streams must be 0 or more and --sizes positive")
    out = args.out or REPO / "bench" / "results" / f"large-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="llmgw-large-") as tmp:
        try:
            result = run(args, Path(tmp))
        except BenchError as exc:
            print(f"bench.large: {exc}", file=sys.stderr)
            return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\nfigures: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
