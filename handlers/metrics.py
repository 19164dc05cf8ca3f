"""The metrics listener's one route: GET /metrics in Prometheus' text format.

It runs as an application of its own on `[metrics] listen`, never on the public port: it asks
for no key, so it must only be reachable from inside the cluster (Prometheus, not the ingress).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tornado.web import Application, RequestHandler

from llmgateway.ops.log import log_request
from llmgateway.ops.metrics import Metrics


class MetricsHandler(RequestHandler):
    """GET /metrics: every metric of this process (read at scrape time where it is state)."""

    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.metrics.exposition())


def log_failed_scrape(handler: Any) -> None:
    """A scrape every few seconds is no news: only a failed one goes to the access log."""
    if handler.get_status() >= 400:
        log_request(handler)


def make_metrics_app(metrics: Metrics) -> Application:
    return Application([(r"/metrics", MetricsHandler, {"metrics": metrics})], log_function=log_failed_scrape)
