"""Running it: logging, Prometheus metrics, the APScheduler jobs and process tuning."""
