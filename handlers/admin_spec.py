"""The OpenAPI 3 document of the admin API, served at /admin/api/v1/openapi.json.

Written by hand next to the handlers it describes; tests/test_admin_schemathesis.py runs
schemathesis against a live gateway with it, so a difference between the two fails the tests.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from llmgateway.audit import VIAS
from llmgateway.catalog.destinations import ANY_HOST, model_hosts
from llmgateway.catalog.models import MAX_UPSTREAMS, secret_envs
from llmgateway.config import LIMIT_NAMES, MODEL_KINDS, MODEL_LIMIT_NAMES, Config
from llmgateway.inputs import MAX_EXPIRY_DAYS, MAX_LIMIT_VALUE, MAX_NAME, MAX_OFFSET, MAX_PAGE, MAX_TEXT
from llmgateway.store.base import GROUPS, KEY_STATUSES, REPORT_ORDERS

JSON = "application/json"
NO_CONTROL = r"^[^\u0000-\u001f]*$"
SOME_TEXT = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": SOME_TEXT}
TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": NO_CONTROL}
DAY = {"type": "string", "format": "date", "description": "A UTC day, YYYY-MM-DD."}
URL = {"type": "string", "maxLength": 2000,
       "pattern": r"^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"}
TIME = {"type": "number", "nullable": True, "description": "Unix time in seconds."}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: list[str] | None = None, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def limits(names: tuple[str, ...]) -> dict[str, Any]:
    return obj({n: {"type": "number", "minimum": 0, "maximum": MAX_LIMIT_VALUE} for n in names}, [])


def paged(item: str) -> dict[str, Any]:
    return obj({"items": {"type": "array", "items": ref(item)}, "total": {"type": "integer"},
                "offset": {"type": "integer"}, "limit": {"type": "integer"}})


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


USER = obj({
    "username": {"type": "string"}, "display_name": {"type": "string"}, "email": {"type": "string"},
    "admin": {"type": "boolean"},
    "admin_source": {"type": "string", "enum": ["idp", "granted", "both", None], "nullable": True},
    "disabled": {"type": "boolean"}, "created": {"type": "number"}, "last_login": TIME,
    "terms_version": {"type": "string", "nullable": True},
    "limits": {"type": "object", "additionalProperties": {"type": "number"}},
    "effective_limits": {"type": "object", "additionalProperties": {"type": "number"}},
})
QUOTA = {"type": "object", "nullable": True, "description": "What is left of the person's budgets (as the portal "
                                                            "shows it); null without budgets."}
KEY = obj({
    "id": {"type": "string"}, "owner": {"type": "string"}, "name": {"type": "string"}, "prefix": {"type": "string"},
    "models": {"type": "array", "items": {"type": "string"}}, "created": {"type": "number"}, "expires": TIME,
    "last_used": TIME, "status": {"type": "string", "enum": list(KEY_STATUSES)},
    "limits": {"type": "object", "additionalProperties": {"type": "number"}},
})
UPSTREAM = {"oneOf": [URL, obj({"url": URL, "weight": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                                       "maximum": 1e6}}, ["url"])]}
MODEL_FIELDS = {
    "upstreams": {"type": "array", "minItems": 1, "maxItems": MAX_UPSTREAMS, "items": UPSTREAM},
    "upstream_model": {"type": "string", "maxLength": 200, "pattern": NO_CONTROL},
    "kind": {"type": "string", "enum": list(MODEL_KINDS)},
    "api_key_env": {"type": "string", "description": "'' or an environment variable allowed for upstream secrets "
                                                     "(see admin.model_secret_envs)."},
    "prompt_cost_per_1k": {"type": "number", "minimum": 0, "maximum": 1e6},
    "completion_cost_per_1k": {"type": "number", "minimum": 0, "maximum": 1e6},
    "active": {"type": "boolean"},
    "usage_probe": {"type": "boolean"},
    "limits": limits(MODEL_LIMIT_NAMES),
}
UPSTREAM_HEALTH = {**obj({
    "url": {"type": "string"}, "state": {"type": "string", "enum": ["healthy", "ejected", "half-open"]},
    "healthy": {"type": "boolean"}, "ejected_until": {**TIME, "description": "Unix time the ejection ends."},
    "trial_in_flight": {"type": "boolean"}, "consecutive_failures": {"type": "integer"},
    "failed_checks": {"type": "integer"},
    "failures": {"type": "integer"}, "failovers": {"type": "integer"}, "ejections": {"type": "integer"},
    "in_flight": {"type": "integer"},
    "last_check": {**obj({"at": {"type": "number"}, "ok": {"type": "boolean"},
                          "status": {"type": "integer", "nullable": True},
                          "error": {"type": "string", "nullable": True}}), "nullable": True},
}), "nullable": True, "description": "null: not served by the replica that answered."}
MODEL = obj({
    "id": {"type": "string"}, "source": {"type": "string", "enum": ["config", "api"]},
    "read_only": {"type": "boolean"},
    "upstreams": {"type": "array", "items": obj({"url": {"type": "string"}, "weight": {"type": "number"}})},
    "upstream_health": {"type": "array", "items": UPSTREAM_HEALTH,
                        "description": "The state of each upstream (same order) on the replica that answered."},
    "upstream_model": {"type": "string"}, "kind": {"type": "string", "enum": list(MODEL_KINDS)},
    "api_key_env": {"type": "string"}, "prompt_cost_per_1k": {"type": "number"},
    "completion_cost_per_1k": {"type": "number"}, "active": {"type": "boolean"}, "usage_probe": {"type": "boolean"},
    "limits": {"type": "object", "additionalProperties": {"type": "number"}},
    "created": TIME, "updated": TIME, "loaded": {"type": "boolean"},
    "problem": {"type": "string", "nullable": True},
})
SUMS = {"requests": {"type": "integer"}, "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"}, "cost": {"type": "number"}, "estimated": {"type": "integer"}}
EVENT = obj({
    "ts": {"type": "number"}, "request_id": {"type": "string"}, "key_id": {"type": "string"},
    "user": {"type": "string"}, "model": {"type": "string"}, "endpoint": {"type": "string"},
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "cost": {"type": "number"},
    "status": {"type": "integer"}, "latency_ms": {"type": "number"}, "streamed": {"type": "boolean"},
    "estimated": {"type": "boolean"},
})
AUDIT = obj({
    "id": {"type": "string"}, "ts": {"type": "number"}, "actor": {"type": "string"},
    "via": {"type": "string", "enum": list(VIAS)}, "source": {"type": "string"}, "action": {"type": "string"},
    "target": {"type": "string"}, "details": {"type": "object"},
})
TOKEN = obj({
    "id": {"type": "string"}, "name": {"type": "string"}, "prefix": {"type": "string"},
    "created_by": {"type": "string"},
    "owner": {"type": "string", "description": "The admin whose current rights the token acts with."},
    "parent": {"type": "string", "nullable": True,
               "description": "The token that made it: it stops with its parent and never outlives it."},
    "created": {"type": "number"}, "expires": TIME, "last_used": TIME,
    "status": {"type": "string", "enum": list(KEY_STATUSES)},
})

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": obj({"message": {"type": "string"}, "type": {"type": "string"},
                                "param": {"type": "string", "nullable": True},
                                "code": {"type": "string", "nullable": True}})}),
    "Me": obj({"actor": {"type": "string"}, "via": {"type": "string", "enum": ["api", "ui"]},
               "person": {"type": "string", "nullable": True,
                          "description": "Whose rights apply (null for the bootstrap token)."},
               "rights": {"type": "array", "items": {"type": "string", "enum": ["admin", "bootstrap", "portal"]}},
               "expires": {**TIME, "description": "When this credential ends (tokens it makes end by then)."}}),
    "User": USER,
    "UserDetail": obj({**USER["properties"], "keys": obj({"active": {"type": "integer"}, "total": {"type": "integer"}}),
                       "quota": QUOTA}),
    "UserPage": paged("User"),
    "UserChange": {**obj({"admin": {"type": "boolean"}, "disabled": {"type": "boolean"},
                          "limits": limits(LIMIT_NAMES)}, []), "minProperties": 1},
    "Key": KEY,
    "KeyPage": paged("Key"),
    "KeyCreate": obj({"user": {**TEXT, "pattern": SOME_TEXT}, "name": NAME,
                      "models": {"type": "array", "items": {"type": "string"}, "description": "Empty: all models."},
                      "expires_days": {"type": "number", "nullable": True, "exclusiveMinimum": True, "minimum": 0,
                                       "maximum": MAX_EXPIRY_DAYS},
                      "limits": limits(LIMIT_NAMES)}, ["user", "name"]),
    "KeyCreated": obj({"key": {"type": "string", "description": "Shown only this once."}, "record": ref("Key")}),
    "KeyChange": {**obj({"name": NAME, "models": {"type": "array", "items": {"type": "string"}},
                         "expires": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1e11},
                         "limits": limits(LIMIT_NAMES)}, []), "minProperties": 1},
    "KeyRevoked": obj({"record": ref("Key")}),
    "Model": MODEL,
    "ModelList": obj({"items": {"type": "array", "items": ref("Model")}, "total": {"type": "integer"}}),
    "ModelCreate": obj({"id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"},
                        **MODEL_FIELDS}, ["id"]),
    "ModelChange": obj(MODEL_FIELDS, []),
    "ModelDeleted": obj({"id": {"type": "string"}, "deleted": {"type": "boolean"}}),
    "UsageRow": obj({"group": {"type": "string"}, **SUMS}),
    "UsageReport": obj({"by": {"type": "string", "enum": list(GROUPS)}, "since": {"type": "string"},
                        "until": {"type": "string"}, "order": {"type": "string", "enum": list(REPORT_ORDERS)},
                        "rows": {"type": "array", "items": ref("UsageRow")}, "total": {"type": "integer"},
                        "totals": obj(SUMS), "offset": {"type": "integer"}, "limit": {"type": "integer"}}),
    "UsageEvent": EVENT,
    "UsageEventPage": paged("UsageEvent"),
    "AuditEntry": AUDIT,
    "AuditPage": paged("AuditEntry"),
    "Token": TOKEN,
    "TokenList": obj({"items": {"type": "array", "items": ref("Token")}, "total": {"type": "integer"}}),
    "TokenCreate": obj({"name": NAME, "expires_days": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                                       "description": "Default admin.token_days; at most "
                                                                      "admin.max_token_days."}}, ["name"]),
    "TokenCreated": obj({"token": {"type": "string", "description": "Shown only this once."},
                         "record": ref("Token")}),
    "TokenRevoked": obj({"record": ref("Token")}),
}

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
        "schemas": SCHEMAS,
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


def url_pattern(hosts: tuple[str, ...]) -> str:
    """A URL pattern that admits only these hosts (`host:port`, or `host` for any port)."""
    choices = []
    for entry in hosts:
        host, _, port = entry.rpartition(":") if not entry.endswith("]") and ":" in entry else (entry, "", "")
        name = re.escape(host)
        if not port:
            choices.append(f"https?://{name}(:[0-9]{{1,5}})?")
            continue
        choices.append(f"https?://{name}:{port}")
        if port in ("80", "443"):
            choices.append(f"{'http' if port == '80' else 'https'}://{name}")
    return rf"^({'|'.join(choices) or '(?!)'})(/[A-Za-z0-9._~/-]*)?$"


def spec(config: Config, model_ids: list[str]) -> dict[str, Any]:
    """The document for this gateway now: which models a key may name, which secret variables a
    model may use, whether a model needs its upstreams, how long tokens may live."""
    doc = copy.deepcopy(BASE)
    schemas = doc["components"]["schemas"]
    models = {"type": "array", "items": {"type": "string", "enum": model_ids}} if model_ids else \
        {"type": "array", "maxItems": 0}
    schemas["KeyCreate"]["properties"]["models"] = schemas["KeyChange"]["properties"]["models"] = models
    for name in ("ModelCreate", "ModelChange"):
        schemas[name]["properties"]["api_key_env"]["enum"] = ["", *sorted(secret_envs(config))]
    if not config.upstream.default_url:
        schemas["ModelCreate"]["required"] = ["id", "upstreams"]
    hosts = model_hosts(config)
    if ANY_HOST not in hosts:
        url = {**URL, "pattern": url_pattern(hosts),
               "description": "On a host of admin.model_hosts (and, with api_key_env, of its secret's hosts)."}
        upstream = {"oneOf": [url, {**UPSTREAM["oneOf"][1], "properties": {**UPSTREAM["oneOf"][1]["properties"],
                                                                            "url": url}}]}
        for name in ("ModelCreate", "ModelChange"):
            schemas[name]["properties"]["upstreams"] = {**MODEL_FIELDS["upstreams"], "items": upstream}
    schemas["TokenCreate"]["properties"]["expires_days"]["maximum"] = config.admin.max_token_days
    return doc
