"""Liveness and readiness for Kubernetes probes."""

from __future__ import annotations

from .base import BaseHandler


class HealthHandler(BaseHandler):
    """GET /healthz: the process answers."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """GET /readyz: the store answers (so keys can be checked and usage written).

    Redis is reported but never makes the replica unready: traffic goes on without it.
    """

    async def get(self) -> None:
        redis = self.gateway.redis_state()
        if await self.gateway.ready():
            self.write_json({"status": "ready", "redis": redis})
        else:
            self.write_json({"status": "store unavailable", "redis": redis}, 503)
