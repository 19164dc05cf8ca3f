"""The HTTP layer: thin Tornado handlers, one module per door."""

from __future__ import annotations

from typing import Any

from tornado.web import Application

from llmgateway.gateway import Gateway

from .base import NotFoundHandler
from .health import HealthHandler, ReadyHandler
from .openai import ModelsHandler, ProxyHandler


def make_app(gateway: Gateway, **settings: Any) -> Application:
    """All routes of the gateway."""
    args = {"gateway": gateway}
    return Application(
        [
            (r"/healthz", HealthHandler, args),
            (r"/readyz", ReadyHandler, args),
            (r"/v1/models", ModelsHandler, args),
            (r"/v1/models/(.+)", ModelsHandler, args),
            (r"/v1/(.+)", ProxyHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        **settings,
    )
