"""The OpenAI-compatible door: /v1/models and every POST /v1/... relayed to an upstream."""

from __future__ import annotations

from tornado.web import stream_request_body

from llmgateway.errors import GatewayError
from llmgateway.proxy import Call, Relay, admit, authorize_model, prepare

from .base import BaseHandler

HARD_BODY_CAP = 64 * 1024 * 1024


class ModelsHandler(BaseHandler):
    """GET /v1/models and /v1/models/{id}: only what this key may use."""

    async def get(self, model_id: str | None = None) -> None:
        try:
            key, _ = await self.gateway.authenticate(self.request.headers.get("Authorization"))
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


@stream_request_body
class ProxyHandler(BaseHandler):
    """POST /v1/<path>: authenticate, then hand the call to the core relay.

    The body is read in chunks so that an oversized one still gets a clean 413 (up to a hard cap,
    past which the connection is closed) instead of a dropped connection.
    """

    call: Call | None = None

    def prepare(self) -> None:
        self.limit = self.gateway.config.server.max_body_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False
        self.request.connection.set_max_body_size(max(self.limit * 4, HARD_BODY_CAP))

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.chunks = []
        else:
            self.chunks.append(chunk)

    async def post(self, path: str) -> None:
        try:
            if self.size > self.limit:
                raise GatewayError(413, f"The request body is larger than {self.limit} bytes.",
                                   "invalid_request_error", "request_too_large")
            key, owner_limits = await self.gateway.authenticate(self.request.headers.get("Authorization"))
            self.call = prepare(self.gateway, key, "/v1/" + path, b"".join(self.chunks), self.request.headers)
            self.chunks = []
            await admit(self.gateway, self.call, owner_limits)
            self.streaming = self.call.stream
            if self.gone:
                self.call.cancel()
            await Relay(self.gateway, self.call, self).run()
        except GatewayError as err:
            if self.call is not None:
                err.headers["X-Request-Id"] = self.call.request_id
            self.send_gateway_error(err)

    def on_connection_close(self) -> None:
        self.gone = True
        if self.call is not None:
            self.call.cancel()

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
