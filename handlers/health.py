"""Liveness and readiness for Kubernetes probes."""

from __future__ import annotations

from .base import BaseHandler


class HealthHandler(BaseHandler):
    """GET /healthz: the process answers."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """GET /readyz: the store answers (so keys can be checked and usage written).

    Redis and each model's upstreams are reported but never make the replica unready: traffic
    goes on without Redis, and upstreams are shared by every replica, so taking replicas out of
    the Service for them would only turn a slow model into a gateway that answers nothing.
    """

    async def get(self) -> None:
        redis = self.gateway.redis_state()
        models = self.gateway.router.health()
        if await self.gateway.ready():
            self.write_json({"status": "ready", "redis": redis, "models": models})
        else:
            self.write_json({"status": "store unavailable", "redis": redis, "models": models}, 503)
