"""Prometheus metrics: every metric declared once here, counted on the hot path for almost nothing.

What an operator asks (is it healthy, is it slow, for which model, what does it cost) without a
label per user or per key: those would make a series per person (Prometheus keeps every series
in memory, for weeks), and who used what is what the usage reports are for. Every label value
comes from a bounded set: the catalog's model ids, the known endpoints (any other relayed path
is "other": a client picks those paths), the upstream URLs of the catalog, and names fixed here.

The hot path pays a dictionary lookup per call for its model and endpoint's series (children of
the labelled metrics are made once and kept), then a few increments and observations of
prometheus_client's own objects (well under a microsecond each). Nothing is counted per chunk
but an integer: time per output chunk is observed once per stream, as the stream's mean gap
between chunks (one observation per chunk cost more than the rest of a call's metrics on a long
stream). What can be read from state (calls in flight, the ledger's queue, the spool, the
upstreams, Redis) is read when Prometheus scrapes, by `StateCollector`, and costs calls nothing.

With `[metrics] listen` unset nothing is counted at all: the gateway holds `NoMetrics`, whose
hooks do nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..catalog.endpoints import KNOWN
from ..redact import redact_url

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..records import UsageEvent

# OpenTelemetry GenAI semantic conventions: metric names, attribute names and bucket boundaries.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
FIRST_CHUNK_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings",
              "/v1/responses": "responses"}
OTHER = "other"
STATUS_CLASSES = ("2xx", "4xx", "5xx")
# Why a /v1 call was refused before it reached an upstream; all created up front, so that alerts
# and dashboards see a series before the first refusal.
REFUSALS = ("auth", "model", "body", "path", "rpm", "tpm", "concurrency", "budget", "limits_unavailable",
            "store_unavailable", "shutdown")
LIMIT_REFUSALS = {"rpm": "rpm", "tpm": "tpm", "conc": "concurrency", "cost_d": "budget", "cost_w": "budget",
                  "tok_d": "budget", "tok_w": "budget"}
# Errors answered before the relay, by their OpenAI error code (429s are counted by admission,
# which knows the limit; anything not listed, an upstream's failure, is not a refusal).
REFUSAL_OF_CODE = {
    "invalid_api_key": "auth", "missing_api_key": "auth", "revoked_api_key": "auth", "expired_api_key": "auth",
    "user_disabled": "auth", "model_not_found": "model", "model_not_allowed": "model", "unknown_path": "path",
    "method_not_allowed": "path", "limits_unavailable": "limits_unavailable", "store_unavailable": "store_unavailable",
}


def status_class(status: int) -> str:
    """"2xx", "4xx" or "5xx" (499, the client closed, is the client's: "4xx")."""
    if status < 400:
        return "2xx"
    return "4xx" if status < 500 else "5xx"


class Series:
    """The children of one (model, endpoint): looked up once per call, never built on the hot path."""

    __slots__ = ("requests", "duration", "first_chunk", "per_chunk", "input_tokens", "output_tokens", "prompt",
                 "completion", "cost")

    def __init__(self, m: Metrics, model: str, endpoint: str) -> None:
        operation = OPERATIONS.get(endpoint, OTHER)
        self.requests = {c: m.requests.labels(model, endpoint, c) for c in STATUS_CLASSES}
        self.duration = m.duration.labels(operation, model)
        self.first_chunk = m.first_chunk.labels(operation, model)
        self.per_chunk = m.per_chunk.labels(operation, model)
        self.input_tokens = m.token_usage.labels(operation, model, "input")
        self.output_tokens = m.token_usage.labels(operation, model, "output")
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.cost = m.cost.labels(model)


class NoMetrics:
    """What the gateway holds when metrics are off: every hook does nothing."""

    enabled = False

    def settled(self, model: str, endpoint: str, status: int, seconds: float, first_chunk: float,
                chunks: int) -> None:
        pass

    def recorded(self, event: UsageEvent) -> None:
        pass

    def refused(self, kind: str) -> None:
        pass

    def refused_error(self, status: int, code: str | None) -> None:
        pass

    def job_ran(self, job: str, ok: bool) -> None:
        pass

    def flushed(self, seconds: float) -> None:
        pass

    def timed_store(self, store: Any) -> Any:
        return store


class Metrics(NoMetrics):
    """One gateway's metrics, in a registry of its own (several gateways can share a process)."""

    enabled = True

    def __init__(self, gateway: Gateway) -> None:
        disable_created_metrics()  # a `_created` series beside every counter doubles the series for no question
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter("llmgateway_requests", "Calls relayed to an upstream, by the status answered.",
                                ("model", "route", "status_class"), registry=registry)
        self.refusals = Counter("llmgateway_refusals", "/v1 calls refused before reaching an upstream, by why.",
                                ("kind",), registry=registry)
        self.duration = Histogram("gen_ai_client_operation_duration_seconds",
                                  "Duration of a relayed call, from admission to its last byte.",
                                  ("gen_ai_operation_name", "gen_ai_request_model"), buckets=DURATION_BUCKETS,
                                  registry=registry)
        self.first_chunk = Histogram("gen_ai_client_operation_time_to_first_chunk_seconds",
                                     "Time from admission to a stream's first chunk to the client.",
                                     ("gen_ai_operation_name", "gen_ai_request_model"), buckets=FIRST_CHUNK_BUCKETS,
                                     registry=registry)
        self.per_chunk = Histogram("gen_ai_client_operation_time_per_output_chunk_seconds",
                                   "A stream's mean time between chunks after the first (one observation per "
                                   "stream).", ("gen_ai_operation_name", "gen_ai_request_model"),
                                   buckets=CHUNK_BUCKETS, registry=registry)
        self.token_usage = Histogram("gen_ai_client_token_usage", "Tokens of a successful call, input and output.",
                                     ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"),
                                     buckets=TOKEN_BUCKETS, registry=registry)
        self.tokens = Counter("llmgateway_tokens", "Tokens recorded in the usage ledger (estimates included).",
                              ("model", "type"), registry=registry)
        self.cost = Counter("llmgateway_cost", "Cost recorded in the usage ledger, in the prices' unit.",
                            ("model",), registry=registry)
        self.flush_duration = Histogram("llmgateway_usage_flush_duration_seconds",
                                        "Duration of a usage ledger flush (store writes and spool).",
                                        buckets=FLUSH_BUCKETS, registry=registry)
        self.job_runs = Counter("llmgateway_job_runs", "Runs of a background job.", ("job_id",), registry=registry)
        self.job_failures = Counter("llmgateway_job_failures", "Failed runs of a background job.", ("job_id",),
                                    registry=registry)
        self.job_success: dict[str, float] = {}
        self.store_duration = Histogram("llmgateway_store_operation_duration_seconds",
                                        "Duration of a store call, by store method.", ("operation",),
                                        buckets=STORE_BUCKETS, registry=registry)
        self._refused = {kind: self.refusals.labels(kind) for kind in REFUSALS}
        self._series: dict[tuple[str, str], Series] = {}
        registry.register(StateCollector(gateway, self.job_success))

    def series(self, model: str, endpoint: str) -> Series:
        found = self._series.get((model, endpoint))
        if found is None:
            if endpoint not in KNOWN:
                endpoint = OTHER
                found = self._series.get((model, OTHER))
            if found is None:
                found = self._series[(model, endpoint)] = Series(self, model, endpoint)
        return found

    def settled(self, model: str, endpoint: str, status: int, seconds: float, first_chunk: float,
                chunks: int) -> None:
        """A relayed call answered (`first_chunk`: seconds to a stream's first chunk, 0 if none)."""
        series = self.series(model, endpoint)
        series.requests[status_class(status)].inc()
        series.duration.observe(seconds)
        if first_chunk:
            series.first_chunk.observe(first_chunk)
            if chunks > 1:
                series.per_chunk.observe((seconds - first_chunk) / (chunks - 1))

    def recorded(self, event: UsageEvent) -> None:
        """An event went into the ledger: its tokens and cost, once (estimated ones too)."""
        series = self.series(event.model, event.endpoint)
        series.prompt.inc(event.prompt_tokens)
        series.completion.inc(event.completion_tokens)
        series.cost.inc(event.cost)
        if event.status < 400:
            series.input_tokens.observe(event.prompt_tokens)
            series.output_tokens.observe(event.completion_tokens)

    def refused(self, kind: str) -> None:
        self._refused[kind].inc()

    def refused_error(self, status: int, code: str | None) -> None:
        """A /v1 error answered before the relay: a refusal if its code (or a 400 or 413) says one."""
        kind = REFUSAL_OF_CODE.get(code or "") or ("body" if status in (400, 413) else None)
        if kind is not None:
            self._refused[kind].inc()

    def job_ran(self, job: str, ok: bool) -> None:
        """A run of a background job ended; its failure count exists (at 0) from its first run."""
        self.job_runs.labels(job).inc()
        failures = self.job_failures.labels(job)
        if ok:
            self.job_success[job] = time.time()
        else:
            failures.inc()

    def flushed(self, seconds: float) -> None:
        self.flush_duration.observe(seconds)

    def timed_store(self, store: Any) -> Any:
        return TimedStore(store, self.store_duration)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class TimedStore:
    """The store with every public method timed into `histogram` (label: the method's name).

    A wrapper rather than a line in each method of each backend; wrapped methods are kept."""

    def __init__(self, store: Any, histogram: Histogram) -> None:
        self._store = store
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr
        child = self._histogram.labels(name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                child.observe(time.perf_counter() - start)

        setattr(self, name, timed)
        return timed


class StateCollector(Collector):
    """Gauges and counters read from the gateway's state when Prometheus scrapes (on the IOLoop)."""

    def __init__(self, gateway: Gateway, job_success: dict[str, float]) -> None:
        self.gateway = gateway
        self.job_success = job_success

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        calls = list(gw.open_calls)
        yield GaugeMetricFamily("llmgateway_requests_in_flight", "Calls being relayed now.", value=len(calls))
        yield GaugeMetricFamily("llmgateway_streams_in_flight", "Streams being relayed now.",
                                value=sum(1 for c in calls if c.stream))
        yield from self._upstreams()
        ledger = gw.ledger
        yield GaugeMetricFamily("llmgateway_usage_queue_depth", "Usage events waiting for the next flush.",
                                value=ledger.queued)
        yield CounterMetricFamily("llmgateway_usage_flush_failures", "Usage flushes the store refused "
                                  "(their events were spooled).", value=ledger.failures)
        files = ledger.spooled_files()
        size = 0
        for path in files:
            try:
                size += path.stat().st_size
            except OSError:
                continue
        yield GaugeMetricFamily("llmgateway_usage_spool_files", "Spool files waiting for the store.",
                                value=len(files))
        yield GaugeMetricFamily("llmgateway_usage_spool_bytes", "Bytes of spool files waiting for the store.",
                                value=size)
        redis = gw.redis_state()
        if redis != "off":
            yield GaugeMetricFamily("llmgateway_redis_up", "1 while the shared Redis answers, 0 while the "
                                    "gateway runs without it.", value=1 if redis == "up" else 0)
        success = GaugeMetricFamily("llmgateway_job_last_success_timestamp_seconds",
                                    "Unix time of the job's last successful run.", labels=("job_id",))
        for job, at in sorted(self.job_success.items()):
            success.add_metric((job,), at)
        yield success

    def _upstreams(self) -> Iterator[Metric]:
        labels = ("model", "upstream")
        healthy = GaugeMetricFamily("llmgateway_upstream_healthy", "1 if the upstream takes calls.", labels=labels)
        failures = CounterMetricFamily("llmgateway_upstream_failures", "Calls this upstream failed.", labels=labels)
        failovers = CounterMetricFamily("llmgateway_upstream_failovers", "Calls moved from this upstream to the "
                                        "next of its pool.", labels=labels)
        ejections = CounterMetricFamily("llmgateway_upstream_ejections", "Times this upstream was taken out of "
                                        "its pool.", labels=labels)
        in_flight = GaugeMetricFamily("llmgateway_upstream_in_flight", "Calls to this upstream now.", labels=labels)
        for model_id, route in list(self.gateway.router.routes.items()):
            for upstream in route.pool:
                values = (model_id, redact_url(upstream.url))
                healthy.add_metric(values, 1 if upstream.healthy else 0)
                failures.add_metric(values, upstream.failures)
                failovers.add_metric(values, upstream.failovers)
                ejections.add_metric(values, upstream.ejections)
                in_flight.add_metric(values, upstream.outstanding)
        yield from (healthy, failures, failovers, ejections, in_flight)
