"""The metrics the gateway exports, as the Kubernetes alert rules and dashboard use them.

tests/test_metrics.py checks a real gateway exports exactly these; tests/test_kubernetes.py checks
the rules and the dashboard use only these.
"""

# name -> (type, labels), as in the metrics section of README.md.
GATEWAY_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels.split()))
    for name, kind, labels in [
        ("llmgateway_requests_total", "counter", "model route status_class"),
        ("llmgateway_requests_in_flight", "gauge", ""),
        ("llmgateway_streams_in_flight", "gauge", ""),
        ("llmgateway_refusals_total", "counter", "kind"),
        ("gen_ai_client_operation_duration_seconds", "histogram", "gen_ai_operation_name gen_ai_request_model"),
        ("gen_ai_client_operation_time_to_first_chunk_seconds", "histogram",
         "gen_ai_operation_name gen_ai_request_model"),
        ("gen_ai_client_operation_time_per_output_chunk_seconds", "histogram",
         "gen_ai_operation_name gen_ai_request_model"),
        ("gen_ai_client_token_usage", "histogram", "gen_ai_operation_name gen_ai_request_model gen_ai_token_type"),
        ("llmgateway_tokens_total", "counter", "model type"),
        ("llmgateway_cost_total", "counter", "model"),
        ("llmgateway_upstream_healthy", "gauge", "model upstream"),
        ("llmgateway_upstream_failures_total", "counter", "model upstream"),
        ("llmgateway_upstream_failovers_total", "counter", "model upstream"),
        ("llmgateway_upstream_ejections_total", "counter", "model upstream"),
        ("llmgateway_upstream_in_flight", "gauge", "model upstream"),
        ("llmgateway_usage_queue_depth", "gauge", ""),
        ("llmgateway_usage_flush_duration_seconds", "histogram", ""),
        ("llmgateway_usage_flush_failures_total", "counter", ""),
        ("llmgateway_usage_spool_files", "gauge", ""),
        ("llmgateway_usage_spool_bytes", "gauge", ""),
        ("llmgateway_redis_up", "gauge", ""),
        ("llmgateway_job_runs_total", "counter", "job_id"),
        ("llmgateway_job_failures_total", "counter", "job_id"),
        ("llmgateway_job_last_success_timestamp_seconds", "gauge", "job_id"),
        ("llmgateway_store_operation_duration_seconds", "histogram", "operation"),
        # prometheus_client's default collectors (the ones the dashboard shows).
        ("process_resident_memory_bytes", "gauge", ""),
        ("process_cpu_seconds_total", "counter", ""),
        # Prometheus' own series for each target.
        ("up", "gauge", ""),
    ]
}
# The labels the Prometheus Operator gives every target of a ServiceMonitor. A metric label of
# the same name would be renamed exported_<name> when scraped (honor_labels is off).
TARGET_LABELS = frozenset({"job", "namespace", "service", "pod", "container", "endpoint", "instance"})


def series_name(name: str) -> str:
    """The exported metric a series belongs to: a histogram's _bucket/_sum/_count are its own."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and GATEWAY_METRICS.get(base, ("",))[0] == "histogram":
            return base
    return name
