"""Admin tokens belong to a person and never hold more than that person now may: a token made by a
token dies with it, the bootstrap token only makes the first admin, and the CLI names an owner."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.admin_client import ADMIN_EXTRA, BOOTSTRAP, AdminClient, browser, error_of, first_admin
from tests.conftest import GatewayProcess, MockUpstream, model_toml, wait_for


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream]) -> GatewayProcess:
    return start_gateway(model_toml("config-model", [start_mock().url]), extra=ADMIN_EXTRA,
                         env={"LLMGW_ADMIN_TOKEN": BOOTSTRAP})


def test_a_token_minted_by_a_token_never_outlives_it(gw: GatewayProcess) -> None:
    root = first_admin(gw)
    parent = root.ok("POST", "/tokens", {"name": "short", "expires_days": 0.00004}, 201)  # about 3.5 s
    by_parent = AdminClient(gw, token=parent["token"])
    child = by_parent.ok("POST", "/tokens", {"name": "successor", "expires_days": 90}, 201)
    assert child["record"]["expires"] <= parent["record"]["expires"]
    assert child["record"]["parent"] == parent["record"]["id"] and child["record"]["owner"] == "root"
    by_child = AdminClient(gw, token=child["token"])
    assert by_child.ok("GET", "/me")["person"] == "root"
    wait_for(lambda: by_parent.call("GET", "/me")[0] == 401, 15, what="the parent's expiry")
    code, answer = by_child.call("GET", "/me")
    assert code == 401 and error_of(answer)["code"] == "invalid_admin_token"


def test_revoking_a_token_ends_the_tokens_it_made(gw: GatewayProcess) -> None:
    root = first_admin(gw)
    parent = root.ok("POST", "/tokens", {"name": "leaked"}, 201)
    child = AdminClient(gw, token=parent["token"]).ok("POST", "/tokens", {"name": "successor"}, 201)
    grandchild = AdminClient(gw, token=child["token"]).ok("POST", "/tokens", {"name": "third"}, 201)
    assert AdminClient(gw, token=grandchild["token"]).ok("GET", "/users")["total"] == 1
    root.ok("POST", f"/tokens/{parent['record']['id']}/revoke")
    for token in (child["token"], grandchild["token"]):
        code, answer = AdminClient(gw, token=token).call("GET", "/users")
        assert code == 401 and "the token that made it" in error_of(answer)["message"]
    assert root.ok("GET", "/me")["person"] == "root"


def test_the_bootstrap_token_only_makes_the_first_admin(gw: GatewayProcess) -> None:
    boot = AdminClient(gw, token=BOOTSTRAP)
    assert boot.ok("GET", "/me") == {"actor": "bootstrap-token", "via": "api", "person": None,
                                     "rights": ["bootstrap"], "expires": None}
    for method, path, body in (("GET", "/users", None), ("POST", "/keys", {"user": "x", "name": "k"}),
                               ("PATCH", "/users/eve", {"admin": True}), ("GET", "/tokens", None),
                               ("POST", "/models", {"id": "m", "upstreams": ["http://127.0.0.1:9"]})):
        code, answer = boot.call(method, path, body)
        assert code == 403 and error_of(answer)["code"] == "bootstrap_only", (method, path, answer)
    for body, param in (({"name": "t"}, "owner"), ({"name": "t", "owner": ""}, "owner"),
                        ({"name": "t", "owner": 5}, "owner"), ({"owner": "root"}, "name")):
        code, answer = boot.call("POST", "/tokens", body)
        assert code == 400 and error_of(answer)["param"] == param, (body, answer)
    root = first_admin(gw, "root")
    assert root.ok("GET", "/users/root")["admin_source"] == "granted"
    code, answer = boot.call("POST", "/tokens", {"name": "second", "owner": "eve"})
    assert code == 401 and error_of(answer)["code"] == "bootstrap_spent"
    code, answer = root.call("POST", "/tokens", {"name": "for-eve", "owner": "eve"})
    assert code == 400 and error_of(answer)["param"] == "owner"
    entries = root.ok("GET", "/audit", params={"actor": "bootstrap-token"})["items"]
    assert [e["action"] for e in entries] == ["token.create", "user.update"]


def test_an_idp_admin_spends_the_bootstrap_token_and_owns_the_tokens_they_make(gw: GatewayProcess) -> None:
    admin = browser(gw, "ada", admin=True)
    assert AdminClient(gw, token=BOOTSTRAP).call("GET", "/me")[0] == 401
    made = admin.ok("POST", "/tokens", {"name": "ada-ci"}, 201)
    assert (made["record"]["owner"], made["record"]["parent"]) == ("ada", None)
    assert made["record"]["expires"] - made["record"]["created"] > 89 * 86400, "a session's token is not capped"
    script = AdminClient(gw, token=made["token"])
    assert script.ok("GET", "/me")["person"] == "ada"
    browser(gw, "ada", admin=False)  # the IdP no longer sends the admin group
    assert script.call("GET", "/me")[0] == 401


def test_the_cli_makes_tokens_only_for_admins(gw: GatewayProcess) -> None:
    result = gw.cli("admin", "token", "create", "--name", "ci", "--owner", "nobody", check=False)
    assert result.returncode == 2 and "--owner" in result.stderr and result.stdout == ""
    gw.cli("admin", "grant", "root")
    token = gw.cli("admin", "token", "create", "--name", "ci", "--owner", "root").stdout.strip()
    assert AdminClient(gw, token=token).ok("GET", "/me")["person"] == "root"
    gw.cli("admin", "ungrant", "root")
    assert AdminClient(gw, token=token).call("GET", "/me")[0] == 401
