"""The admin API's model catalog: list, add, change and remove models without a restart.

Config-managed models are read-only here (see `catalog.models` for the rule). Each upstream is shown
with its state on this replica (healthy, ejected, half-open: see `catalog.routing`). A change is written to
the store, served by this replica at once, and announced through Redis so every replica serves
it at once too; without Redis the others pick it up within `admin.catalog_refresh_seconds`.
"""

from __future__ import annotations

import time
from typing import Any

from ..audit import Actor
from ..catalog import models as catalog
from ..config import ModelConfig
from ..errors import GatewayError, conflict, not_found
from ..gateway import Gateway
from ..records import ModelRecord
from ..redact import redact_upstreams
from .bodies import model_bodies


class ModelAdmin:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.config = gateway.config
        self.config_ids = {m.id for m in gateway.config.models}

    def _health(self, model_id: str) -> dict[str, dict]:
        """The state of each upstream this replica serves the model from, by URL."""
        route = self.gateway.router.routes.get(model_id)
        if route is None:
            return {}
        now = time.monotonic()
        return {u.url: u.describe(now) for u in route.pool}

    def _config_view(self, model: ModelConfig) -> dict[str, Any]:
        return catalog.view(model, "config", health=self._health(model.id))

    def _view(self, record: ModelRecord) -> dict[str, Any]:
        """An API model as served here, or, if this replica cannot serve it, with its problem."""
        problem = self.gateway.model_problems.get(record.id)
        try:
            model = catalog.to_model_config(record.id, record.settings, self.config)
        except GatewayError as exc:
            model, problem = ModelConfig(record.id, upstreams=()), exc.message
        return catalog.view(model, "api", record, problem, self._health(record.id))

    async def list_models(self) -> dict[str, Any]:
        records = await self.gateway.in_thread(self.store.list_models)
        items = [self._config_view(m) for m in self.config.models]
        items += [self._view(r) for r in records]
        return {"items": items, "total": len(items)}

    async def show_model(self, model_id: str) -> dict[str, Any]:
        for model in self.config.models:
            if model.id == model_id:
                return self._config_view(model)
        return self._view(await self._record(model_id))

    async def _record(self, model_id: str) -> ModelRecord:
        record = await self.gateway.in_thread(self.store.get_model, model_id)
        if record is None:
            raise not_found("model", "model_not_found")
        return record

    def _writable(self, model_id: str) -> None:
        if model_id in self.config_ids:
            raise conflict(f"The model {model_id!r} is managed by the configuration file ({self.config.source}); "
                           "change it there.", "model_in_config", "id")

    async def create_model(self, actor: Actor, body: Any) -> dict[str, Any]:
        create, _ = model_bodies(self.config)
        settings = create.parse(body).given()
        model_id = settings.pop("id")
        catalog.check_loadable(catalog.to_model_config(model_id, settings, self.config))
        self._writable(model_id)
        now = time.time()
        record = ModelRecord(model_id, settings, now, now)
        if not await self.gateway.in_thread(self.store.insert_model, record):
            raise conflict(f"A model with the id {model_id!r} already exists.", "model_exists", "id")
        await self.gateway.models_saved()
        await self.gateway.audit(actor, "model.create", model_id, _audited(settings))
        return self._view(record)

    async def update_model(self, actor: Actor, model_id: str, body: Any) -> dict[str, Any]:
        self._writable(model_id)
        record = await self._record(model_id)
        _, change = model_bodies(self.config)
        settings = catalog.changed_settings(record.settings, change.parse(body).given())
        catalog.check_loadable(catalog.to_model_config(model_id, settings, self.config))
        changed = ModelRecord(model_id, settings, record.created, time.time())
        if not await self.gateway.in_thread(self.store.update_model, changed):
            raise not_found("model", "model_not_found")
        await self.gateway.models_saved()
        await self.gateway.audit(actor, "model.update", model_id, {"changes": _audited(body)})
        return self._view(changed)

    async def delete_model(self, actor: Actor, model_id: str) -> dict[str, Any]:
        self._writable(model_id)
        if not await self.gateway.in_thread(self.store.delete_model, model_id):
            raise not_found("model", "model_not_found")
        await self.gateway.models_saved()
        await self.gateway.audit(actor, "model.delete", model_id)
        return {"id": model_id, "deleted": True}


def _audited(settings: dict[str, Any]) -> dict[str, Any]:
    """Model settings as the audit log keeps them: URLs without credentials."""
    return {**settings, "upstreams": redact_upstreams(settings["upstreams"])} if "upstreams" in settings else settings
