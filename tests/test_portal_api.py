"""The portal's JSON API through the development login: CSRF, bad input, the key limit, terms.

Every refusal must answer a JSON error with a message for the page and leave nothing half-written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest
import requests

from tests.conftest import GatewayProcess, MockUpstream, model_toml
from tests.portal_helpers import stored_users

HELLO = [{"role": "user", "content": "Hello"}]


@dataclass
class Person:
    """A logged-in browser: its cookies and the XSRF token its page would send."""

    gw: GatewayProcess
    client: requests.Session

    @property
    def xsrf(self) -> str:
        return self.client.cookies["_xsrf"]

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None,
             token: bool = True) -> tuple[int, dict]:
        headers = {"X-XSRFToken": self.xsrf} if token else {}
        if body is not None:
            raw = requests.models.complexjson.dumps(body).encode()
        answer = self.client.request(method, self.gw.url + "/portal/api/" + path, data=raw, headers=headers,
                                     timeout=10)
        return answer.status_code, answer.json()

    def keys(self) -> list[dict]:
        return self.call("GET", "keys")[1]["keys"]


def dev_login(gw: GatewayProcess, username: str) -> Person:
    client = requests.Session()
    page = client.get(gw.url + "/portal/dev-login", timeout=10)
    assert "DEVELOPMENT LOGIN" in page.text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    answer = client.post(gw.url + "/portal/dev-login", data={"_xsrf": xsrf, "username": username, "next": "/portal"},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["Location"] == "/portal"
    client.get(gw.url + "/portal", timeout=10)
    return Person(gw, client)


@pytest.fixture
def portal_gw(start_gateway: Callable[..., GatewayProcess], start_mock: Callable[..., MockUpstream]) -> GatewayProcess:
    upstream = start_mock().url
    return start_gateway(model_toml("test-model", [upstream]) + model_toml("other-model", [upstream])
                         + model_toml("retired-model", [upstream], active=False),
                         extra="[portal]\nenabled = true\ndev_login = true\nmax_keys_per_user = 3\n")


def test_state_changes_need_the_xsrf_token(portal_gw: GatewayProcess) -> None:
    alice = dev_login(portal_gw, "alice")
    for method, path, body in (("POST", "terms", {"version": "1"}), ("POST", "keys", {"name": "k"})):
        status, error = alice.call(method, path, body, token=False)
        assert status == 403 and "reload" in error["error"]["message"].lower()
    assert stored_users(portal_gw.db_path)["alice"]["agreement_version"] is None
    assert alice.call("POST", "terms", {"version": "1"})[0] == 200
    status, created = alice.call("POST", "keys", {"name": "k"})
    assert status == 201
    status, _ = alice.call("DELETE", "keys/" + created["record"]["id"], token=False)
    assert status == 403 and alice.keys()[0]["status"] == "active"
    forged = requests.post(portal_gw.url + "/portal/dev-login", data={"username": "mallory"}, allow_redirects=False,
                           timeout=10)
    assert forged.status_code == 403 and "<!doctype html>" in forged.text.lower()
    assert "llmgw_session" not in forged.cookies
    assert "mallory" not in stored_users(portal_gw.db_path)


def test_the_api_needs_a_session(portal_gw: GatewayProcess) -> None:
    for path in ("me", "keys", "usage"):
        answer = requests.get(portal_gw.url + "/portal/api/" + path, timeout=10)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "not_logged_in"
    page = requests.get(portal_gw.url + "/portal", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and page.headers["Location"] == "/portal/dev-login?next=%2Fportal"


def test_terms_are_stored_server_side_before_any_key(portal_gw: GatewayProcess) -> None:
    alice = dev_login(portal_gw, "alice")
    status, me = alice.call("GET", "me")
    assert status == 200 and me["terms"]["accepted"] is False and me["dev_login"] is True
    assert me["models"] == ["test-model", "other-model"] and me["key_limit"] == 3
    status, error = alice.call("POST", "keys", {"name": "k"})
    assert status == 403 and error["error"]["code"] == "terms_not_accepted" and alice.keys() == []
    for body, code in (({"version": "0"}, 409), ({"version": 1}, 400), ({}, 400), ([], 400)):
        status, error = alice.call("POST", "terms", body)
        assert status == code and error["error"]["message"]
    assert alice.call("POST", "terms", raw=b"{not json")[0] == 400
    assert stored_users(portal_gw.db_path)["alice"]["agreement_version"] is None
    assert alice.call("POST", "terms", {"version": "1"}) == (200, {"accepted": True, "version": "1"})
    again = dev_login(portal_gw, "alice")
    assert again.call("GET", "me")[1]["terms"]["accepted"] is True


BAD_KEYS = [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "   "}, "name"), ({"name": 5}, "name"),
    ({"name": "x" * 101}, "name"), ({"name": "a\nb"}, "name"), ({"name": "k", "models": "test-model"}, "models"),
    ({"name": "k", "models": [1]}, "models"), ({"name": "k", "models": ["retired-model"]}, "models"),
    ({"name": "k", "models": ["nope"]}, "models"), ({"name": "k", "expires_days": 0}, "expires_days"),
    ({"name": "k", "expires_days": -1}, "expires_days"), ({"name": "k", "expires_days": "30"}, "expires_days"),
    ({"name": "k", "expires_days": True}, "expires_days"), ({"name": "k", "expires_days": 1e9}, "expires_days"),
    ({"name": "k", "owner": "bob"}, "owner"), ([{"name": "k"}], None),
]


def test_bad_key_requests_get_a_json_error_and_write_nothing(portal_gw: GatewayProcess, subtests) -> None:
    alice = dev_login(portal_gw, "alice")
    alice.call("POST", "terms", {"version": "1"})
    for body, param in BAD_KEYS:
        with subtests.test(body=body):
            status, error = alice.call("POST", "keys", body)
            assert status == 400 and error["error"]["message"] and error["error"]["param"] == param
    for raw in (b"", b"{", b"null", b'"name"', b"x" * 70_000):
        with subtests.test(raw=raw[:10]):
            status, error = alice.call("POST", "keys", raw=raw)
            assert status in (400, 413) and error["error"]["message"]
    assert alice.keys() == []
    for days in ("0", "91", "abc", "-3"):
        status, error = alice.call("GET", f"usage?days={days}")
        assert status == 400 and error["error"]["param"] == "days"
    for key_id in ("key_0123456789abcdef", "nope"):
        status, error = alice.call("DELETE", "keys/" + key_id)
        assert status == 404 and error["error"]["code"] == "key_not_found"


def test_a_person_can_only_see_and_revoke_their_own_keys(portal_gw: GatewayProcess) -> None:
    alice, bob = dev_login(portal_gw, "alice"), dev_login(portal_gw, "bob")
    for person in (alice, bob):
        person.call("POST", "terms", {"version": "1"})
    status, created = alice.call("POST", "keys", {"name": "alice's", "models": ["test-model"], "expires_days": 7})
    assert status == 201 and created["record"]["models"] == ["test-model"]
    assert created["record"]["expires"] - created["record"]["created"] == pytest.approx(7 * 86400, abs=5)
    assert "key" not in alice.keys()[0] and "hash" not in alice.keys()[0]
    assert bob.keys() == []
    status, error = bob.call("DELETE", "keys/" + created["record"]["id"])
    assert status == 404 and alice.keys()[0]["status"] == "active"
    client = portal_gw.client(created["key"])
    assert client.chat.completions.create(model="test-model", messages=HELLO).choices
    status, revoked = alice.call("DELETE", "keys/" + created["record"]["id"])
    assert status == 200 and revoked["record"]["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="test-model", messages=HELLO)


def test_the_key_limit_is_clear_and_counts_only_usable_keys(portal_gw: GatewayProcess) -> None:
    alice = dev_login(portal_gw, "alice")
    alice.call("POST", "terms", {"version": "1"})
    ids = [alice.call("POST", "keys", {"name": f"k{i}"})[1]["record"]["id"] for i in range(3)]
    status, error = alice.call("POST", "keys", {"name": "one too many"})
    assert status == 409 and error["error"]["code"] == "key_limit_reached"
    assert "3 active keys" in error["error"]["message"] and "Revoke" in error["error"]["message"]
    assert len(alice.keys()) == 3
    alice.call("DELETE", "keys/" + ids[0])
    assert alice.call("POST", "keys", {"name": "replacement"})[0] == 201
    listing = alice.call("GET", "keys")[1]
    assert listing["active"] == 3 and listing["limit"] == 3 and len(listing["keys"]) == 4


def test_usage_shows_what_is_left_of_the_budgets(start_gateway: Callable[..., GatewayProcess],
                                                start_mock: Callable[..., MockUpstream]) -> None:
    upstream = start_mock().url
    gw = start_gateway(model_toml("paid", [upstream], completion_cost_per_1k=1.0),
                       extra="[portal]\nenabled = true\ndev_login = true\n[limits.user]\ncost_per_day = 0.5\n")
    alice = dev_login(gw, "alice")
    assert alice.call("GET", "usage")[1]["quota"]["budgets"][0]["remaining"] == 0.5
    assert alice.call("POST", "terms", {"version": "1"})[0] == 200
    key = alice.call("POST", "keys", {"name": "k"})[1]["key"]
    gw.client(key).chat.completions.create(model="paid", messages=HELLO, max_tokens=10)
    gw.wait_events(1)
    quota = alice.call("GET", "usage")[1]["quota"]
    [budget] = quota["budgets"]
    assert budget["name"] == "cost_per_day" and budget["spent"] == pytest.approx(0.01)
    assert budget["remaining"] == pytest.approx(0.49) and "0.49 of 0.50 left" in quota["summary"]
    bob = dev_login(gw, "bob")
    assert bob.call("GET", "usage")[1]["quota"]["budgets"][0]["spent"] == 0


def test_key_limit_holds_across_two_replicas(start_gateway: Callable[..., GatewayProcess],
                                             start_mock: Callable[..., MockUpstream], tmp_path) -> None:
    upstream = start_mock().url
    shared = {"env": {"LLMGW_SESSION_SECRET": "s" * 40}, "store_path": tmp_path / "shared.db"}
    extra = "[portal]\nenabled = true\ndev_login = true\nmax_keys_per_user = 2\n"
    replicas = [start_gateway(model_toml("test-model", [upstream]), extra=extra, **shared) for _ in range(2)]
    users = [f"user{u}" for u in range(8)]
    people = {(u, r): dev_login(gw, u) for u in users for r, gw in enumerate(replicas)}
    for u in users:
        assert people[(u, 0)].call("POST", "terms", {"version": "1"})[0] == 200
    attempts = [(u, i % 2) for u in users for i in range(4)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda a: (a[0], people[a].call("POST", "keys", {"name": "k"})[0]), attempts))
    for u in users:
        statuses = [status for who, status in answers if who == u]
        assert set(statuses) <= {201, 409} and statuses.count(201) <= 2
        listed = people[(u, 1)].call("GET", "keys")[1]["keys"]
        active = [k for k in listed if k["status"] == "active"]
        assert len(active) == statuses.count(201) <= 2, f"{u}: never more active keys than the limit"
