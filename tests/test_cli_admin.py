"""`llmgateway admin ...` on a fresh install: the first admin, admin tokens, keys, usage export, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import requests

from tests.admin_client import ADMIN_EXTRA, AdminClient, browser
from tests.conftest import GatewayProcess, MockUpstream, model_toml

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream]) -> GatewayProcess:
    return start_gateway(model_toml("m", [start_mock().url]), extra=ADMIN_EXTRA)


def test_the_first_admin_and_their_token_without_a_browser(gw: GatewayProcess) -> None:
    assert AdminClient(gw).call("GET", "/users")[0] == 401  # no bootstrap token on this install
    gw.cli("admin", "grant", "root")
    root = browser(gw, "root", admin=False)
    assert root.ok("GET", "/users/root")["admin_source"] == "granted"
    result = gw.cli("admin", "token", "create", "--name", "ci", "--expires-days", "7", "--owner", "root")
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("lgw-admin-")
    script = AdminClient(gw, token=token)
    assert script.ok("GET", "/me")["via"] == "api"
    listed = json.loads(gw.cli("admin", "token", "list", "--json").stdout)
    assert [(t["name"], t["status"]) for t in listed] == [("ci", "active")] and token not in json.dumps(listed)
    gw.cli("admin", "token", "revoke", listed[0]["id"])
    assert script.call("GET", "/me")[0] == 401
    gw.cli("admin", "ungrant", "root")
    assert root.call("GET", "/users")[0] == 403
    gw.cli("admin", "grant", "ops")
    actions = [(e["action"], e["via"]) for e in
               AdminClient(gw, token=gw.cli("admin", "token", "create", "--name", "t", "--owner", "ops").stdout.strip())
               .ok("GET", "/audit", params={"via": "cli"})["items"]]
    assert actions == [("token.create", "cli"), ("user.update", "cli"), ("user.update", "cli"), ("token.revoke", "cli"),
                       ("token.create", "cli"), ("user.update", "cli")]


def test_keys_list_filtered_revoke_and_usage_export(gw: GatewayProcess) -> None:
    keys = {user: gw.create_key(user, name=f"{user}-key") for user in ("ann", "ben")}
    gw.client(keys["ann"]).chat.completions.create(model="m", messages=HELLO)
    gw.wait_events(1)
    listed = json.loads(gw.cli("admin", "keys", "list", "--user", "ann", "--json").stdout)
    assert [k["name"] for k in listed] == ["ann-key"] and "hash" not in listed[0]
    gw.cli("admin", "keys", "revoke", listed[0]["id"])
    revoked = json.loads(gw.cli("admin", "keys", "list", "--status", "revoked", "--json").stdout)
    assert [k["owner"] for k in revoked] == ["ann"]
    capped = gw.cli("admin", "keys", "list", "--limit", "1")
    assert "showing 1 of 2 keys" in capped.stderr
    csv = gw.cli("admin", "usage", "export", "--by", "user").stdout.splitlines()
    assert csv[0] == "group,requests,prompt_tokens,completion_tokens,cost,estimated"
    assert [line.split(",")[:2] for line in csv[1:]] == [["ann", "1"]]


@pytest.mark.parametrize("args, message", [
    (("admin", "ungrant", "nobody"), "no user 'nobody'"),
    (("admin", "token", "revoke", "adm_nope"), "no admin token with id 'adm_nope'"),
    (("admin", "token", "create", "--name", "x", "--owner", "o", "--expires-days", "1000"), "admin.max_token_days"),
    (("admin", "token", "create", "--name", " ", "--owner", "o"), "--name must not be empty"),
    (("admin", "token", "create", "--name", "x", "--owner", "nobody"), "--owner: 'nobody' is not an enabled admin"),
    (("admin", "keys", "list", "--limit", "0"), "--limit must be from 1"),
    (("admin", "keys", "revoke", "key_nope"), "no key with id 'key_nope'"),
    (("admin", "usage", "export", "--since", "last week"), "--since: since must be a date"),
])
def test_bad_input_gets_one_line_and_exit_2(gw: GatewayProcess, args: tuple[str, ...], message: str) -> None:
    result = gw.cli(*args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_a_disabled_admin_cannot_reach_the_admin_page(gw: GatewayProcess) -> None:
    gw.cli("admin", "grant", "zed")
    zed = browser(gw, "zed", admin=False)
    assert zed.session.get(gw.url + "/admin", timeout=10).status_code == 200
    gw.cli("admin", "grant", "ops")
    token = gw.cli("admin", "token", "create", "--name", "t", "--owner", "ops").stdout.strip()
    AdminClient(gw, token=token).ok("PATCH", "/users/zed", {"disabled": True})
    page = zed.session.get(gw.url + "/admin", timeout=10, allow_redirects=False)
    assert page.status_code == 302 and isinstance(page, requests.Response)
