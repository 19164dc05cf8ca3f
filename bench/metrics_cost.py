"""`python -m bench.metrics_cost`: what the Prometheus metrics cost a call, metrics on against off.

Four gateways from this repository run side by side in front of one mock upstream, the same in
everything but `[metrics] listen` (off: no counting at all; on: every hook counts and a scrape
runs each round, as Prometheus would): off, on, on, off, started in that order so that neither
kind has the better place. All are pinned to one core, the mock and the load driver to the
other. Each round measures them one after another (off, on, on, off, then reversed), so that
whatever else loads the machine meets both kinds alike; a kind's figure in a round is the mean
of its two gateways'. Each round measures per gateway the p50 of sequential calls
on one connection (plain and streamed), the throughput at 50 connections (plain and streamed),
and the gateway's CPU time per call during those throughput runs. Wall-clock figures swing with
whatever else the machine runs; CPU time per call swings much less, so it shows a small cost
best. First it times the hooks themselves in-process (what one call adds when metrics are on:
the series lookup, the counters and the histograms of a plain call and of a stream), which no
other load on the machine disturbs. It prints a Markdown table of the medians over the rounds
and the median of the per-round differences, and writes the figures as JSON. `--control` runs
both gateways with metrics off: the differences it prints are the harness's noise on this
machine, the yardstick for the real run's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

from bench.run import MODEL, BenchError, Children, Plan, free_port, start_gateway, start_mock
from llmgateway.ops.metrics import Metrics
from llmgateway.records import UsageEvent

from . import load

MEASURES = ("p50_ms", "stream_p50_ms", "rps", "stream_rps", "cpu_us_per_call", "stream_cpu_us_per_call")
HIGHER_IS_WORSE = {"p50_ms", "stream_p50_ms", "cpu_us_per_call", "stream_cpu_us_per_call"}


def one_round(target: load.Target, pid: int, args: argparse.Namespace, cpu: int | None) -> dict[str, float]:
    plain, stream = load.chat_body(MODEL, False), load.chat_body(MODEL, True)
    figures = {
        "p50_ms": load.sequential_latency(target, plain, args.requests, args.warmup)["latency_ms"]["p50"],
        "stream_p50_ms": load.sequential_latency(target, stream, args.requests, args.warmup)["latency_ms"]["p50"],
    }
    for prefix, body in (("", plain), ("stream_", stream)):
        before = load.cpu_seconds(pid)
        result = load.throughput(target, body, args.connections, args.duration, cpu)
        used = load.cpu_seconds(pid) - before
        figures[prefix + "rps"] = result["rps"]
        figures[prefix + "cpu_us_per_call"] = round(1e6 * used / max(1, result["requests"]), 1)
    return figures


def hook_cost(calls: int = 200_000) -> dict[str, float]:
    """Microseconds the metrics hooks add to one call (plain, and a stream of 20 chunks), in-process."""
    metrics = Metrics(None)  # type: ignore[arg-type]  # the gateway is only read at scrape time
    event = UsageEvent(ts=0.0, request_id="r", key_id="k", user="u", model=MODEL, prompt_tokens=11,
                       completion_tokens=20, cost=0.001, status=200, latency_ms=1.0, streamed=False, estimated=False,
                       endpoint="/v1/chat/completions")

    def plain() -> None:
        metrics.settled(MODEL, "/v1/chat/completions", 200, 0.004, 0.0, 0)
        metrics.recorded(event)

    def stream() -> None:
        metrics.settled(MODEL, "/v1/chat/completions", 200, 0.004, 0.001, 20)
        metrics.recorded(event)

    return {name: round(min(timeit.repeat(fn, number=calls, repeat=5)) / calls * 1e6, 2)
            for name, fn in (("plain_us", plain), ("stream_us", stream))}


def scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return len(answer.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--requests", type=int, default=400, help="sequential calls per round (default 400)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each throughput run (default 5)")
    parser.add_argument("--chunks", type=int, default=20, help="tokens (chunks) per answer (default 20)")
    parser.add_argument("--control", action="store_true", help="metrics off in both: the noise floor")
    parser.add_argument("--out", type=Path, default=Path("bench/results/metrics-cost.json"))
    args = parser.parse_args(argv)
    plan = Plan(requests=args.requests, warmup=args.warmup, connections=args.connections, duration=args.duration,
                streams=0, chunks=args.chunks, interval_ms=0, ramp_s=0)
    gateway_cpu, client_cpu = 0, 1
    hooks = hook_cost()
    print(f"hooks per call: {json.dumps(hooks)}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as tmp:
        children = Children(Path(tmp))
        try:
            _, mock_port = start_mock(children, plan, client_cpu, "mock")
            gateways = []
            for n, kind in enumerate(("off", "on", "on", "off")):
                workdir = Path(tmp) / f"{kind}{n}"
                workdir.mkdir()
                metrics_port = free_port()
                counting = kind == "on" and not args.control
                extra = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n\n' if counting else ""
                proc, port, key = start_gateway(children, sys.executable, workdir, mock_port, plan, gateway_cpu,
                                                extra=extra, name=f"gateway-{kind}{n}")
                gateways.append((kind, load.Target("127.0.0.1", port, key=key), proc.pid, metrics_port if extra else 0))
            rounds: list[dict[str, dict[str, float]]] = []
            for i in range(args.rounds):
                measured: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
                for kind, target, pid, metrics_port in gateways if i % 2 == 0 else reversed(gateways):
                    measured[kind].append(one_round(target, pid, args, client_cpu))
                    if metrics_port:
                        scrape(metrics_port)
                figures = {kind: {m: round(statistics.mean(f[m] for f in runs), 3) for m in MEASURES}
                           for kind, runs in measured.items()}
                rounds.append(figures)
                print(f"round {i + 1}: " + json.dumps(figures), file=sys.stderr)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            children.stop_all()
    report = summarise(rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "args": {k: str(v) for k, v in vars(args).items()}, "hooks": hooks,
                                    "rounds": rounds, "summary": report}, indent=2))
    print(f"Metrics hooks per call, in-process: {hooks['plain_us']} µs (plain), {hooks['stream_us']} µs (stream).\n")
    print("| measure | metrics off | metrics on | difference (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for measure in MEASURES:
        row = report[measure]
        print(f"| {measure} | {row['off']:g} | {row['on']:g} | {row['cost_percent']:+.1f} % |")
    return 0


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians over the rounds, and the median of each round's cost of metrics in percent
    (positive: metrics on is slower)."""
    report = {}
    for measure in MEASURES:
        off = [r["off"][measure] for r in rounds]
        on = [r["on"][measure] for r in rounds]
        sign = 1 if measure in HIGHER_IS_WORSE else -1
        costs = [sign * 100 * (b - a) / a for a, b in zip(off, on, strict=True) if a]
        report[measure] = {"off": round(statistics.median(off), 3), "on": round(statistics.median(on), 3),
                           "cost_percent": round(statistics.median(costs), 2)}
    return report


if __name__ == "__main__":
    sys.exit(main())
