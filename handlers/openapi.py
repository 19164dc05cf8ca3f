"""The OpenAPI 3.0 document of the admin API, served at /admin/api/v1/openapi.json.

Its schemas are generated from declarations in the core: the request bodies from
`llmgateway.admin.bodies` (the same classes check the requests) and the answers from
`llmgateway.admin.answers`. The paths and their query arguments are listed here.
tests/test_admin_schemathesis.py runs schemathesis against a live gateway with the document, so a
difference between the two fails the tests.

OpenAPI 3.0, not 3.1 (whose schemas are pydantic's own JSON Schema): schemathesis checks both alike,
but finds fewer links between operations in a 3.1 document, so its stateful phase would try fewer
sequences of calls (33 links instead of 37, half the scenarios). `openapi30` translates.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from llmgateway.admin import answers
from llmgateway.admin.bodies import KeyChange, KeyCreate, UserChange, model_bodies, token_create
from llmgateway.audit import VIAS
from llmgateway.config import Config
from llmgateway.fields import NO_CONTROL
from llmgateway.inputs import MAX_OFFSET, MAX_PAGE, MAX_TEXT
from llmgateway.store.base import GROUPS, KEY_STATUSES, REPORT_ORDERS

JSON = "application/json"
TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": NO_CONTROL}
DAY = {"type": "string", "format": "date", "description": "A UTC day, YYYY-MM-DD."}
REF = "#/components/schemas/{model}"
NULL = {"type": "null"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


PAGING = [query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}),
          query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Default 50.")]
RANGE = [query("since", DAY, "First day (UTC), included."), query("until", DAY, "Last day (UTC), included.")]


def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


ERRORS = {
    "400": error("Bad input; `param` names the field."),
    "401": error("No valid admin token or session."),
    "403": error("Logged in but not an admin, or a session call without the XSRF token."),
}


def op(summary: str, response: str | dict[str, Any], status: str = "200", params: list | None = None,
       body: str | None = None, errors: tuple[str, ...] = ()) -> dict[str, Any]:
    content = response if isinstance(response, dict) else {JSON: {"schema": ref(response)}}
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {status: {"description": summary, "content": content}, **ERRORS,
                      **{code: error(text) for code, text in (
                          ("404", "No such item."), ("409", "Conflict: the change cannot be made as asked."),
                          ("413", "The body is too large."))
                         if code in errors}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
        operation["responses"].setdefault("413", error("The body is too large."))
    return operation


class Document(GenerateJsonSchema):
    """JSON Schema as the document gives it: no titles pydantic makes up from field names, and no
    `default: null` where null only stands for "not sent"."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", 0) is None:
            del json_schema["default"]
        return json_schema


ANSWERS = ("Error", "Me", "User", "UserDetail", "UserPage", "Key", "KeyPage", "KeyCreated", "KeyRevoked", "Model",
           "ModelList", "ModelDeleted", "UsageRow", "UsageReport", "UsageEvent", "UsageEventPage", "AuditEntry",
           "AuditPage", "Token", "TokenList", "TokenCreated", "TokenRevoked")


def schemas(config: Config) -> dict[str, Any]:
    """Every schema of the document, by name, for this gateway's settings."""
    return {**_answers(), **_bodies((UserChange, KeyCreate, KeyChange, token_create(config), *model_bodies(config)))}


@cache
def _answers() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in ANSWERS:
        schema = TypeAdapter(getattr(answers, name)).json_schema(ref_template=REF, schema_generator=Document)
        found.update(schema.pop("$defs", {}))
        found[name] = schema
    return openapi30(found)


@cache
def _bodies(bodies: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    _, defs = models_json_schema([(body, "validation") for body in bodies], ref_template=REF,
                                 schema_generator=Document)
    return openapi30(defs["$defs"])


def openapi30(node: Any) -> Any:
    """JSON Schema as pydantic writes it (draft 2020-12) in OpenAPI 3.0's dialect: null allowed by
    `nullable`, `exclusiveMinimum` as a flag on `minimum`, `const` as an enum of one."""
    if isinstance(node, list):
        return [openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {name: openapi30(value) for name, value in node.items()}
    choices = node.get("anyOf", [])
    if NULL in choices:
        node.pop("anyOf")
        rest = [choice for choice in choices if choice != NULL]
        inner = rest[0] if len(rest) == 1 and "$ref" not in rest[0] else {"allOf" if len(rest) == 1 else "anyOf": rest}
        node = {**inner, **node, "nullable": True}
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    if not isinstance(node.get("exclusiveMinimum", True), bool):
        node.update(minimum=node.pop("exclusiveMinimum"), exclusiveMinimum=True)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return node

USAGE_FILTERS = [query("user", TEXT), query("key", TEXT), query("model", TEXT)]

PATHS: dict[str, Any] = {
    "/openapi.json": {"get": op("This document", {JSON: {"schema": {"type": "object"}}})},
    "/me": {"get": op("Who is calling", "Me")},
    "/users": {"get": op("List people", "UserPage", params=[
        query("search", TEXT, "Part of the username, display name or email (any case)."),
        query("role", {"type": "string", "enum": ["admin", "user"]}),
        query("status", {"type": "string", "enum": ["active", "disabled"]}), *PAGING])},
    "/users/{username}": {
        "parameters": [path("username")],
        "get": op("One person, their key counts and quota", "UserDetail", errors=("404",)),
        "patch": op("Grant or remove admin, disable or enable (refuses all their keys at once), replace limit "
                    "overrides", "User", body="UserChange", errors=("404", "409")),
    },
    "/keys": {
        "get": op("List keys", "KeyPage", params=[
            query("user", TEXT), query("model", TEXT, "Keys that may use this model."),
            query("status", {"type": "string", "enum": list(KEY_STATUSES)}),
            query("search", TEXT, "Part of the name, id or prefix."), *PAGING]),
        "post": op("Create a key for a person (shown once)", "KeyCreated", "201", body="KeyCreate"),
    },
    "/keys/{key_id}": {
        "parameters": [path("key_id")],
        "get": op("One key", "Key", errors=("404",)),
        "patch": op("Change name, models, expiry or limits", "Key", body="KeyChange", errors=("404",)),
    },
    "/keys/{key_id}/revoke": {
        "parameters": [path("key_id")],
        "post": op("Revoke the key (on every replica at once with Redis); it stays listed as revoked",
                   "KeyRevoked", errors=("404",)),
    },
    "/models": {
        "get": op("The model catalog: config-file models (read-only) and API models", "ModelList"),
        "post": op("Add a model (served by every replica within seconds)", "Model", "201", body="ModelCreate",
                   errors=("409",)),
    },
    "/models/{model_id}": {
        "parameters": [path("model_id")],
        "get": op("One model", "Model", errors=("404",)),
        "patch": op("Change an API model", "Model", body="ModelChange", errors=("404", "409")),
        "delete": op("Remove an API model", "ModelDeleted", errors=("404", "409")),
    },
    "/usage": {"get": op(
        "Usage grouped by user, key, model or day, with totals (JSON or CSV)",
        {JSON: {"schema": ref("UsageReport")}, "text/csv": {"schema": {"type": "string"}}},
        params=[query("by", {"type": "string", "enum": list(GROUPS)}, "Default day."), *RANGE, *USAGE_FILTERS,
                query("order", {"type": "string", "enum": list(REPORT_ORDERS)}),
                query("format", {"type": "string", "enum": ["json", "csv"]}), *PAGING])},
    "/usage/events": {"get": op("Raw usage events of one person or key, newest first", "UsageEventPage",
                                params=[query("user", TEXT), query("key", TEXT), *RANGE, *PAGING])},
    "/audit": {"get": op("The audit log, newest first", "AuditPage", params=[
        query("actor", TEXT), query("action", TEXT, "A prefix: 'key.' finds every key change."),
        query("target", TEXT), query("via", {"type": "string", "enum": list(VIAS)}), *RANGE, *PAGING])},
    "/tokens": {
        "get": op("Admin tokens", "TokenList"),
        "post": op("Create an admin token of the calling admin (shown once); one made by a token expires by its "
                   "parent's expiry. The bootstrap token instead sends {\"name\", \"owner\"}: the owner becomes "
                   "the first admin", "TokenCreated", "201", body="TokenCreate", errors=("409",)),
    },
    "/tokens/{token_id}/revoke": {
        "parameters": [path("token_id")],
        "post": op("Revoke an admin token", "TokenRevoked", errors=("404",)),
    },
}

BASE: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "LLM Gateway admin API", "version": "1",
             "description": "Manage people, keys, models, admin tokens; read usage and the audit log."},
    "servers": [{"url": "/admin/api/v1"}],
    "security": [{"adminToken": []}, {"session": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer",
                           "description": "An admin token (acts with its owner's current rights), or the bootstrap "
                                          "token from admin.bootstrap_token_env (only GET /me and making the "
                                          "first admin's token, until an admin exists)."},
            "session": {"type": "apiKey", "in": "cookie", "name": "llmgw_session",
                        "description": "A portal session of an admin; changes need the X-XSRFToken header."},
        },
    },
}


def spec(config: Config, model_ids: list[str]) -> dict[str, Any]:
    """The document for this gateway now. Two facts are the door's, not a body's: which models a
    key may name (all that are routed), and that a model needs its upstreams without
    upstream.default_url (the config file's parser says so)."""
    doc = copy.deepcopy(BASE)
    found = doc["components"]["schemas"] = copy.deepcopy(schemas(config))
    models = {"type": "array", "items": {"type": "string", "enum": model_ids}} if model_ids else \
        {"type": "array", "maxItems": 0}
    for name in ("KeyCreate", "KeyChange"):
        found[name]["properties"]["models"] = {**found[name]["properties"]["models"], **models}
    if not config.upstream.default_url:
        found["ModelCreate"]["required"] = [*found["ModelCreate"]["required"], "upstreams"]
    return doc
