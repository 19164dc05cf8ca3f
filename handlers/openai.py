"""The OpenAI-compatible door: /v1/models and every POST /v1/... relayed to an upstream.

The key is checked from the headers and the path resolved to a registry endpoint before a byte
of the body is read (see `BodyReader`); the body is then read up to `server.max_body_bytes`.
"""

from __future__ import annotations

from collections.abc import Awaitable

from llmgateway.auth.caller import Caller
from llmgateway.catalog.endpoints import KNOWN, Endpoint, resolve, unknown_path
from llmgateway.errors import GatewayError
from llmgateway.records import KeyRecord
from llmgateway.relay.proxy import Call, Relay, admit, authorize_model, prepare

from .base import BaseHandler, BodyReader


class ModelsHandler(BaseHandler):
    """GET /v1/models and /v1/models/{id}: only what this key may use."""

    async def get(self, model_id: str | None = None) -> None:
        try:
            caller = await self.callers.api_key(self.request.headers.get("Authorization"))
            key = caller.key
            assert key is not None
            if model_id is None:
                data = [_model(r.model.id) for r in self.gateway.router.visible() if key.allows(r.model.id)]
                self.write_json({"object": "list", "data": data})
                return
            authorize_model(self.gateway, key, model_id)
            self.write_json(_model(model_id))
        except GatewayError as err:
            self.send_gateway_error(err)


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "llmgateway"}


class ProxyHandler(BodyReader, BaseHandler):
    """POST /v1/<path>: authenticate, resolve the endpoint, then hand the call to the core relay."""

    call: Call | None = None
    key: KeyRecord
    owner_limits: dict[str, float]
    endpoint: Endpoint

    def prepare(self) -> Awaitable[None] | None:
        """Synchronous when the key is cached in this process (the steady state): an awaited
        `prepare` costs Tornado a few percent of a call's CPU."""
        self.body_cap = self.gateway.config.server.max_body_bytes
        self.streaming = False
        try:
            caller = self.callers.api_key_cached(self.request.headers.get("Authorization"))
        except GatewayError as err:
            self.refuse(err)
            return None
        if caller is None:
            return self._prepare_after_lookup()
        self._ready(caller)
        return None

    async def _prepare_after_lookup(self) -> None:
        try:
            caller = await self.callers.api_key(self.request.headers.get("Authorization"))
        except GatewayError as err:
            self.refuse(err)
            return
        self._ready(caller)

    def _ready(self, caller: Caller) -> None:
        """The caller is known: resolve the endpoint, then let the body come."""
        assert caller.key is not None
        self.key, self.owner_limits = caller.key, caller.owner_limits
        try:
            if self.request.method != "POST":
                if self.request.path in KNOWN:
                    raise self.method_not_allowed()
                raise unknown_path(self.request.path)
            self.endpoint = resolve(self.request.path)
        except GatewayError as err:
            self.refuse(err)
            return
        self.check_content_length()
        self.watch_body(self.gateway.config.server.body_timeout_seconds)

    def refuse(self, exc: Exception) -> None:
        if isinstance(exc, GatewayError):
            self.gateway.metrics.refused_error(exc.status, exc.code)
        super().refuse(exc)

    async def post(self, _path: str) -> None:
        self.body_arrived()
        relaying = False
        try:
            self.call = prepare(self.gateway, self.key, self.endpoint, self.request_body(), self.request.headers)
            self.drop_body()
            await admit(self.gateway, self.call, self.owner_limits)
            self.streaming = self.call.stream
            if self.gone:
                self.call.cancel()
            relaying = True
            await Relay(self.gateway, self.call, self).run()
        except GatewayError as err:
            if not relaying:
                self.gateway.metrics.refused_error(err.status, err.code)
            if self.call is not None:
                err.headers["X-Request-Id"] = self.call.request_id
            self.send_gateway_error(err)

    def on_connection_close(self) -> None:
        self.gone = True
        if self.call is not None:
            self.call.cancel()
        super().on_connection_close()

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.set_status(status)
        for name, value in headers:
            self.set_header(name, value)

    def send(self, data: bytes) -> None:
        if self.gone:
            return
        self.write(data)
        if self.streaming:
            self.flush()

    def end(self) -> None:
        if not self.gone:
            self.finish()
