"""The admin REST API against a live gateway: who may call it, every route, bad input, no partial writes.

Callers are the bootstrap token, admin tokens, admin and non-admin browser sessions (through the
development login, which stands in for the IdP's admin rule) and anonymous clients; API keys are
used through the official openai SDK to see the effect of admin changes on /v1.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import pytest
import requests

from tests.admin_client import ADMIN_EXTRA, BOOTSTRAP, AdminClient, browser, error_of, first_admin
from tests.conftest import GatewayProcess, MockUpstream, model_toml, wait_for

HELLO = [{"role": "user", "content": "Hello"}]
ROUTES = [
    ("GET", "/openapi.json"), ("GET", "/me"), ("GET", "/users"), ("GET", "/users/alice"),
    ("PATCH", "/users/alice"), ("GET", "/keys"), ("POST", "/keys"), ("GET", "/keys/key_x"),
    ("PATCH", "/keys/key_x"), ("POST", "/keys/key_x/revoke"), ("GET", "/models"), ("POST", "/models"),
    ("GET", "/models/m"), ("PATCH", "/models/m"), ("DELETE", "/models/m"), ("GET", "/usage"),
    ("GET", "/usage/events"), ("GET", "/audit"), ("GET", "/tokens"), ("POST", "/tokens"),
    ("POST", "/tokens/adm_x/revoke"),
]


@pytest.fixture
def upstream(start_mock: Callable[..., MockUpstream]) -> MockUpstream:
    return start_mock()


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayProcess], upstream: MockUpstream) -> GatewayProcess:
    return start_gateway(model_toml("config-model", [upstream.url]),
                         extra=ADMIN_EXTRA + "[admin]\ncatalog_refresh_seconds = 300\n",
                         env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP})


@pytest.fixture
def boot(gw: GatewayProcess) -> AdminClient:
    """The first admin's token (the bootstrap token made them, and is spent now)."""
    return first_admin(gw)


def test_everyone_but_admins_is_refused_everything(gw: GatewayProcess, boot: AdminClient) -> None:
    key = gw.create_key("bob")
    bob = browser(gw, "bob", admin=False)
    callers = {
        "anonymous": (AdminClient(gw), 401),
        "an API key": (AdminClient(gw, token=key), 401),
        "a wrong token": (AdminClient(gw, token="lgw-admin-" + "x" * 43), 401),
        "a non-admin session": (bob, 403),
        "the bootstrap token once an admin exists": (AdminClient(gw, token=BOOTSTRAP), 401),
    }
    for who, (client, status) in callers.items():
        for method, path in ROUTES:
            code, answer = client.call(method, path, {} if method in ("POST", "PATCH") else None)
            assert code == status, (who, method, path, code, answer)
            assert error_of(answer)["type"] in ("authentication_error", "permission_error"), (who, answer)
    page = bob.session.get(gw.url + "/admin", timeout=10, allow_redirects=False)
    assert page.status_code == 403 and "not an administrator" in page.text
    anon = AdminClient(gw).session.get(gw.url + "/admin", timeout=10, allow_redirects=False)
    assert anon.status_code == 302 and "/portal/dev-login?next=%2Fadmin" in anon.headers["Location"]
    # the bootstrap token's grant and token, and the key created above (by the CLI)
    assert [e["action"] for e in boot.ok("GET", "/audit")["items"]] == ["key.create", "token.create", "user.update"]


def test_admin_sessions_need_the_xsrf_token_for_changes(gw: GatewayProcess) -> None:
    admin = browser(gw, "root", admin=True)
    assert admin.ok("GET", "/me") == {"actor": "root", "via": "ui", "person": "root", "rights": ["admin", "portal"],
                                      "expires": None}
    admin.xsrf = False
    code, answer = admin.call("POST", "/keys", {"user": "carol", "name": "k"})
    assert code == 403 and error_of(answer)["code"] == "xsrf_missing"
    admin.xsrf = True
    assert admin.ok("GET", "/keys", params={"user": "carol"})["total"] == 0
    created = admin.ok("POST", "/keys", {"user": "carol", "name": "k"}, 201)
    entry = admin.ok("GET", "/audit", params={"action": "key.create"})["items"][0]
    assert (entry["actor"], entry["via"], entry["source"], entry["target"]) == \
        ("root", "ui", "127.0.0.1", created["record"]["id"])
    page = admin.session.get(gw.url + "/admin", timeout=10)
    assert page.status_code == 200 and "admin.js" in page.text


def test_admin_tokens_are_shown_once_hashed_revocable_and_expire(gw: GatewayProcess, boot: AdminClient) -> None:
    created = boot.ok("POST", "/tokens", {"name": "ci"}, 201)
    token, record = created["token"], created["record"]
    assert token.startswith("lgw-admin-") and record["status"] == "active"
    assert 89 * 86400 < record["expires"] - record["created"] <= 90 * 86400
    script = AdminClient(gw, token=token)
    assert script.ok("GET", "/me") == {"actor": f"token:{record['id']}", "via": "api", "person": "root",
                                       "rights": ["admin"], "expires": record["expires"]}
    listed = boot.ok("GET", "/tokens")["items"]
    assert listed[0]["id"] == record["id"] and listed[0]["last_used"] is not None and listed[0]["owner"] == "root"
    assert token not in gw.db_path.read_bytes().decode(errors="replace")
    assert boot.ok("POST", f"/tokens/{record['id']}/revoke")["record"]["status"] == "revoked"
    code, answer = script.call("GET", "/me")
    assert code == 401 and error_of(answer)["code"] == "invalid_admin_token"
    short = boot.ok("POST", "/tokens", {"name": "short", "expires_days": 0.00002}, 201)
    wait_for(lambda: AdminClient(gw, token=short["token"]).call("GET", "/me")[0] == 401, 10, what="token expiry")
    for body, param in (({"name": ""}, "name"), ({"name": "x", "expires_days": 400}, "expires_days"),
                        ({"name": "x", "expires_days": "5"}, "expires_days"), ({"nme": "x"}, "nme"), ([], None)):
        code, answer = boot.call("POST", "/tokens", body)
        assert code == 400 and error_of(answer)["param"] == param, (body, answer)
    assert boot.call("POST", "/tokens/adm_nope/revoke")[0] == 404
    assert gw.log().count(token) == 0 and BOOTSTRAP not in gw.log()


def test_a_short_bootstrap_token_stops_the_start(start_gateway: Callable[..., GatewayProcess]) -> None:
    gw = start_gateway("", env={"LLMGW_ADMIN_TOKEN": "short"}, run=False)
    result = gw.cli("serve", check=False)
    assert result.returncode == 2 and "admin.bootstrap_token_env" in result.stderr
    assert "short" not in result.stderr


def test_users_list_search_and_page_in_the_server(gw: GatewayProcess, boot: AdminClient) -> None:
    for name in ("ann", "anna", "bert", "Annette"):
        browser(gw, name, admin=name == "bert")
    listed = boot.ok("GET", "/users", params={"search": "ann", "limit": "2"})
    assert listed["total"] == 3 and [u["username"] for u in listed["items"]] == ["Annette", "ann"]
    second = boot.ok("GET", "/users", params={"search": "ANN", "limit": "2", "offset": "2"})
    assert [u["username"] for u in second["items"]] == ["anna"]
    admins = boot.ok("GET", "/users", params={"role": "admin"})["items"]
    assert [(u["username"], u["admin_source"]) for u in admins] == [("bert", "idp"), ("root", "granted")]
    detail = boot.ok("GET", "/users/ann")
    assert detail["keys"] == {"active": 0, "total": 0} and detail["admin"] is False
    for params, param in (({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"offset": "-1"}, "offset"),
                          ({"role": "root"}, "role"), ({"status": "gone"}, "status"), ({"search": ""}, "search")):
        code, answer = boot.call("GET", "/users", params=params)
        assert code == 400 and error_of(answer)["param"] == param, (params, answer)
    assert boot.call("GET", "/users/nobody")[0] == 404


def test_granting_admin_and_the_rules_that_keep_admins_in(gw: GatewayProcess, boot: AdminClient) -> None:
    carol = browser(gw, "carol", admin=False)
    assert carol.call("GET", "/users")[0] == 403
    assert boot.ok("PATCH", "/users/carol", {"admin": True})["admin_source"] == "granted"
    assert carol.ok("GET", "/users")["total"] == 2  # carol and root
    browser(gw, "carol", admin=False)  # a later login keeps the granted role
    assert boot.ok("GET", "/users/carol")["admin"] is True
    code, answer = carol.call("PATCH", "/users/carol", {"admin": False})
    assert code == 409 and error_of(answer)["code"] == "self_change"
    browser(gw, "dave", admin=True)
    code, answer = boot.call("PATCH", "/users/dave", {"admin": False})
    assert code == 409 and error_of(answer)["code"] == "admin_by_idp"
    assert boot.ok("PATCH", "/users/carol", {"admin": False})["admin"] is False
    assert carol.call("GET", "/users")[0] == 403


def test_user_changes_are_all_or_nothing(gw: GatewayProcess, boot: AdminClient) -> None:
    browser(gw, "erin", admin=False)
    for body, param in (({"admin": True, "limits": {"bogus": 1}}, "limits"),
                        ({"admin": True, "limits": {"requests_per_minute": -1}}, "limits"),
                        ({"admin": "yes"}, "admin"), ({"disabled": 1}, "disabled"), ({"role": "admin"}, "role"),
                        ({}, None), ("x", None)):
        code, answer = boot.call("PATCH", "/users/erin", body)
        assert code == 400 and error_of(answer)["param"] == param, (body, answer)
    code, answer = boot.call("PATCH", "/users/erin", raw=b"{not json")
    assert code == 400 and "JSON" in error_of(answer)["message"]
    assert boot.call("PATCH", "/users/erin", raw=b"x" * 70_000)[0] == 413
    after = boot.ok("GET", "/users/erin")
    assert after["admin"] is False and after["limits"] == {}
    assert boot.ok("GET", "/audit", params={"target": "erin"})["total"] == 0
    assert boot.call("PATCH", "/users/ghost", {"admin": True})[0] == 404
    assert boot.call("GET", "/users/ghost")[0] == 404


def test_disabling_a_person_refuses_all_their_keys_at_once(gw: GatewayProcess, boot: AdminClient) -> None:
    keys = [gw.create_key("frank", name=f"k{i}") for i in range(2)]
    for key in keys:
        assert gw.client(key).chat.completions.create(model="config-model", messages=HELLO).usage
    boot.ok("PATCH", "/users/frank", {"disabled": True})
    for key in keys:
        with pytest.raises(openai.AuthenticationError) as refused:
            gw.client(key).chat.completions.create(model="config-model", messages=HELLO)
        assert refused.value.body["code"] == "user_disabled"
    page = browser_refused(gw, "frank")
    assert page.status_code == 403 and "disabled" in page.text
    boot.ok("PATCH", "/users/frank", {"disabled": False, "limits": {"requests_per_minute": 1}})
    assert gw.client(keys[0]).chat.completions.create(model="config-model", messages=HELLO).usage
    with pytest.raises(openai.RateLimitError):
        gw.client(keys[1]).chat.completions.create(model="config-model", messages=HELLO)


def browser_refused(gw: GatewayProcess, username: str) -> requests.Response:
    """A development login of someone an admin disabled."""
    client = AdminClient(gw).session
    page = client.get(gw.url + "/portal/dev-login", timeout=10)
    xsrf = page.text.split('name="_xsrf" value="', 1)[1].split('"', 1)[0]
    return client.post(gw.url + "/portal/dev-login", data={"_xsrf": xsrf, "username": username}, timeout=10)


def test_keys_created_changed_filtered_and_revoked(gw: GatewayProcess, boot: AdminClient) -> None:
    created = boot.ok("POST", "/keys", {"user": "gina", "name": "nb", "models": ["config-model"],
                                        "expires_days": 30, "limits": {"requests_per_minute": 5}}, 201)
    key, record = created["key"], created["record"]
    assert record["owner"] == "gina" and record["limits"] == {"requests_per_minute": 5.0}
    assert key not in gw.db_path.read_bytes().decode(errors="replace")
    client = gw.client(key)
    answer = client.chat.completions.with_raw_response.create(model="config-model", messages=HELLO)
    assert answer.headers["x-ratelimit-limit-requests"] == "5"
    other = gw.create_key("hank", name="other")
    assert [k["id"] for k in boot.ok("GET", "/keys", params={"user": "gina"})["items"]] == [record["id"]]
    assert boot.ok("GET", "/keys", params={"search": "NB"})["total"] == 1
    assert boot.ok("GET", "/keys", params={"model": "config-model"})["total"] == 2
    changed = boot.ok("PATCH", f"/keys/{record['id']}", {"name": "renamed", "limits": {}, "expires": None})
    assert (changed["name"], changed["limits"], changed["expires"]) == ("renamed", {}, None)
    answer = client.chat.completions.with_raw_response.create(model="config-model", messages=HELLO)
    assert "x-ratelimit-limit-requests" not in answer.headers
    boot.ok("PATCH", f"/keys/{record['id']}", {"expires": time.time() - 1})
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="config-model", messages=HELLO)
    assert boot.ok("GET", "/keys", params={"status": "expired"})["items"][0]["id"] == record["id"]
    hank_id = boot.ok("GET", "/keys", params={"user": "hank"})["items"][0]["id"]
    assert boot.ok("POST", f"/keys/{hank_id}/revoke")["record"]["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        gw.client(other).models.list()
    assert boot.ok("GET", "/keys", params={"status": "revoked"})["total"] == 1
    actions = [e["action"] for e in boot.ok("GET", "/audit", params={"action": "key."})["items"]]
    assert actions == ["key.revoke", "key.update", "key.update", "key.create", "key.create"]


def test_key_input_is_checked_before_anything_is_written(gw: GatewayProcess, boot: AdminClient) -> None:
    for body, param in (({"name": "k"}, "user"), ({"user": "x"}, "name"), ({"user": "x", "name": " "}, "name"),
                        ({"user": "x", "name": "k", "models": ["nope"]}, "models"),
                        ({"user": "x", "name": "k", "expires_days": 0}, "expires_days"),
                        ({"user": "x", "name": "k", "limits": {"cost_per_day": "1"}}, "limits"),
                        ({"user": 5, "name": "k"}, "user"), ({"user": "x", "name": "k", "id": "key_1"}, "id")):
        code, answer = boot.call("POST", "/keys", body)
        assert code == 400 and error_of(answer)["param"] == param, (body, answer)
    assert boot.ok("GET", "/keys")["total"] == 0 and boot.ok("GET", "/users")["total"] == 1  # root
    record = boot.ok("POST", "/keys", {"user": "ivy", "name": "k"}, 201)["record"]
    for body, param in (({"name": "ok", "expires": "soon"}, "expires"), ({"models": "all"}, "models"),
                        ({"owner": "eve"}, "owner"), ({}, None)):
        code, answer = boot.call("PATCH", f"/keys/{record['id']}", body)
        assert code == 400 and error_of(answer)["param"] == param, (body, answer)
    assert boot.ok("GET", f"/keys/{record['id']}")["name"] == "k"
    for method, path in (("GET", "/keys/key_nope"), ("PATCH", "/keys/key_nope"), ("POST", "/keys/key_nope/revoke")):
        code, answer = boot.call(method, path, {"name": "x"} if method == "PATCH" else None)
        assert code == 404 and error_of(answer)["code"] == "key_not_found"
    for params, param in (({"status": "lost"}, "status"), ({"user": "u" * 201}, "user")):
        code, answer = boot.call("GET", "/keys", params=params)
        assert code == 400 and error_of(answer)["param"] == param


def test_models_added_changed_and_removed_live(gw: GatewayProcess, boot: AdminClient, upstream: MockUpstream) -> None:
    key = gw.create_key("jo")
    client = gw.client(key)
    assert [m.id for m in client.models.list()] == ["config-model"]
    model = boot.ok("POST", "/models", {"id": "org/live-model", "upstreams": [upstream.url],
                                        "upstream_model": "test-model", "prompt_cost_per_1k": 0.5}, 201)
    assert (model["source"], model["read_only"], model["loaded"]) == ("api", False, True)
    assert [m.id for m in client.models.list()] == ["config-model", "org/live-model"]
    answer = client.chat.completions.create(model="org/live-model", messages=HELLO)
    assert answer.usage.prompt_tokens > 0
    assert upstream.requests()[-1]["body"]["model"] == "test-model"
    listed = boot.ok("GET", "/models")["items"]
    assert [(m["id"], m["source"], m["read_only"]) for m in listed] == \
        [("config-model", "config", True), ("org/live-model", "api", False)]
    assert boot.ok("GET", "/models/org%2Flive-model")["prompt_cost_per_1k"] == 0.5
    assert boot.ok("PATCH", "/models/org%2Flive-model", {"active": False})["active"] is False
    assert [m.id for m in client.models.list()] == ["config-model"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="org/live-model", messages=HELLO)
    assert boot.ok("DELETE", "/models/org%2Flive-model") == {"id": "org/live-model", "deleted": True}
    assert boot.call("GET", "/models/org%2Flive-model")[0] == 404
    actions = [e["action"] for e in boot.ok("GET", "/audit", params={"action": "model."})["items"]]
    assert actions == ["model.delete", "model.update", "model.create"]


def test_config_models_are_read_only_and_model_input_is_checked(gw: GatewayProcess, boot: AdminClient,
                                                                 upstream: MockUpstream) -> None:
    for method, body in (("PATCH", {"active": False}), ("DELETE", None)):
        code, answer = boot.call(method, "/models/config-model", body)
        assert code == 409 and error_of(answer)["code"] == "model_in_config"
    code, answer = boot.call("POST", "/models", {"id": "config-model", "upstreams": [upstream.url]})
    assert code == 409 and error_of(answer)["code"] == "model_in_config"
    good = {"id": "m1", "upstreams": [upstream.url]}
    for change, param in (({"id": " bad id"}, "id"), ({"upstreams": []}, "upstreams"),
                          ({"upstreams": ["ftp://x"]}, "upstreams"), ({"upstreams": [{"url": upstream.url,
                                                                                      "weight": 0}]}, "upstreams"),
                          ({"kind": "image"}, "kind"), ({"prompt_cost_per_1k": -1}, "prompt_cost_per_1k"),
                          ({"api_key_env": "LLMGW_SESSION_SECRET"}, "api_key_env"), ({"active": "no"}, "active"),
                          ({"limits": {"cost_per_day": 1}}, "limits"), ({"secret": "x"}, "secret")):
        code, answer = boot.call("POST", "/models", {**good, **change})
        assert code == 400 and error_of(answer)["param"] == param, (change, answer)
    boot.ok("POST", "/models", good, 201)
    code, answer = boot.call("POST", "/models", good)
    assert code == 409 and error_of(answer)["code"] == "model_exists"
    code, answer = boot.call("PATCH", "/models/m1", {"kind": "image", "active": False})
    assert code == 400 and boot.ok("GET", "/models/m1")["active"] is True
    code, answer = boot.call("PATCH", "/models/m1", {"id": "m2"})
    assert code == 400 and error_of(answer)["param"] == "id"
    assert boot.call("PATCH", "/models/nope", {"active": False})[0] == 404
    assert boot.call("DELETE", "/models/nope")[0] == 404


def test_usage_reports_totals_csv_and_events(gw: GatewayProcess, boot: AdminClient) -> None:
    keys = {user: gw.create_key(user) for user in ("kim", "lee")}
    for user, calls in (("kim", 3), ("lee", 1)):
        for _ in range(calls):
            gw.client(keys[user]).chat.completions.create(model="config-model", messages=HELLO)
    events = gw.wait_events(4)
    by_user = boot.ok("GET", "/usage", params={"by": "user", "order": "requests"})
    assert [(r["group"], r["requests"]) for r in by_user["rows"]] == [("kim", 3), ("lee", 1)]
    assert by_user["totals"]["prompt_tokens"] == sum(e["prompt_tokens"] for e in events)
    assert by_user["totals"]["completion_tokens"] == sum(e["completion_tokens"] for e in events)
    day = boot.ok("GET", "/usage", params={"by": "day"})
    assert [r["requests"] for r in day["rows"]] == [4] and day["total"] == 1
    top = boot.ok("GET", "/usage", params={"by": "user", "order": "requests", "limit": "1", "offset": "1"})
    assert [r["group"] for r in top["rows"]] == ["lee"] and top["total"] == 2
    code, text = boot.call("GET", "/usage", params={"by": "model", "format": "csv"})
    assert code == 200 and text.splitlines() == [
        "group,requests,prompt_tokens,completion_tokens,cost,estimated",
        f"config-model,4,{by_user['totals']['prompt_tokens']},{by_user['totals']['completion_tokens']},0.0,0"]
    page = boot.ok("GET", "/usage/events", params={"user": "kim", "limit": "2"})
    assert page["total"] == 3 and len(page["items"]) == 2 and page["items"][0]["ts"] >= page["items"][1]["ts"]
    for since, until in (("2020-01-01", "2020-01-31"), ("2026-12-01", "2026-11-01")):
        empty = boot.ok("GET", "/usage", params={"since": since, "until": until})
        assert empty["rows"] == [] and empty["totals"]["requests"] == 0 and empty["total"] == 0
    for params, param in (({"by": "hour"}, "by"), ({"since": "2026-02-30"}, "since"), ({"until": "tomorrow"}, "until"),
                          ({"order": "size"}, "order"), ({"format": "xml"}, "format"), ({"limit": "501"}, "limit")):
        code, answer = boot.call("GET", "/usage", params=params)
        assert code == 400 and error_of(answer)["param"] == param, (params, answer)
    assert boot.ok("GET", "/usage/events")["total"] == 4


def test_the_audit_log_reads_and_filters_changes_from_every_door(gw: GatewayProcess, boot: AdminClient) -> None:
    mia = browser(gw, "mia", admin=False)
    assert mia.session.post(gw.url + "/portal/api/terms", json={"version": "1"},
                            headers={"X-XSRFToken": mia.session.cookies["_xsrf"]}, timeout=10).status_code == 200
    portal_key = mia.session.post(gw.url + "/portal/api/keys", json={"name": "mine"},
                                  headers={"X-XSRFToken": mia.session.cookies["_xsrf"]}, timeout=10).json()
    gw.cli("keys", "revoke", portal_key["record"]["id"])
    boot.ok("PATCH", "/users/mia", {"limits": {"tokens_per_day": 100}})
    entries = boot.ok("GET", "/audit")["items"]
    assert [(e["action"], e["via"]) for e in entries] == [
        ("user.update", "api"), ("key.revoke", "cli"), ("key.create", "portal"), ("terms.accept", "portal"),
        ("token.create", "api"), ("user.update", "api")]
    assert entries[-1]["actor"] == entries[-2]["actor"] == "bootstrap-token"
    assert entries[0]["actor"].startswith("token:adm_") and entries[0]["details"] == {
        "changes": {"limits": {"tokens_per_day": 100.0}}}
    assert entries[1]["actor"].startswith("cli:") and entries[2]["actor"] == "mia"
    assert [e["action"] for e in boot.ok("GET", "/audit", params={"via": "portal"})["items"]] == \
        ["key.create", "terms.accept"]
    assert boot.ok("GET", "/audit", params={"actor": "mia", "limit": "1"})["total"] == 2
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert boot.ok("GET", "/audit", params={"since": today, "until": today})["total"] == 6
    assert boot.ok("GET", "/audit", params={"until": "2020-01-01"})["total"] == 0
    for params, param in (({"via": "email"}, "via"), ({"since": "yesterday"}, "since"), ({"limit": "x"}, "limit")):
        code, answer = boot.call("GET", "/audit", params=params)
        assert code == 400 and error_of(answer)["param"] == param
