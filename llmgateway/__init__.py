"""LLM Gateway: an OpenAI-compatible gateway with per-user keys and exact usage metering."""

__version__ = "0.1.0"
