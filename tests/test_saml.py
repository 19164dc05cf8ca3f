"""SAML login against a real pysaml2 IdP: what is accepted, and everything that must be refused
without a session or a user row being created."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from jose import jwt
from lxml import etree
from saml2 import samlp

from tests.conftest import ROOT, SESSION_SECRET, GatewayProcess, free_port
from tests.idp import LoopbackIdP, Request, expire
from tests.portal_helpers import begin_login, post_response, sets_session, stored_users

NS = {"saml": "urn:oasis:names:tc:SAML:2.0:assertion", "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
      "ds": "http://www.w3.org/2000/09/xmldsig#"}
EPPN = "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"
AFFILIATION = "urn:oid:1.3.6.1.4.1.5923.1.1.1.1"


def _xml(saml_response: str) -> etree._Element:
    return etree.fromstring(base64.b64decode(saml_response))


def _b64(root: etree._Element) -> str:
    return base64.b64encode(etree.tostring(root)).decode()


def _set_attribute(assertion: etree._Element, name: str, value: str) -> None:
    node = assertion.find(f".//saml:Attribute[@Name='{name}']/saml:AttributeValue", NS)
    assert node is not None
    node.text = value


def test_metadata_is_valid_sp_metadata(saml_gw: GatewayProcess) -> None:
    answer = requests.get(saml_gw.url + "/saml/metadata", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/samlmetadata+xml")
    root = etree.fromstring(answer.content)
    assert root.get("entityID") == saml_gw.url + "/saml/metadata"
    md = "{urn:oasis:names:tc:SAML:2.0:metadata}"
    sp = root.find(f"{md}SPSSODescriptor")
    assert sp is not None and sp.get("WantAssertionsSigned") == "true" and sp.get("AuthnRequestsSigned") == "true"
    acs = sp.find(f"{md}AssertionConsumerService")
    assert acs.get("Location") == saml_gw.url + "/saml/acs"
    assert sp.find(f"{md}SingleLogoutService").get("Location") == saml_gw.url + "/saml/sls"
    assert sp.find(f"{md}KeyDescriptor") is not None


def test_login_creates_the_user_and_a_session(saml_gw: GatewayProcess, idp: LoopbackIdP) -> None:
    client, request = begin_login(saml_gw, idp, "/portal#usage")
    answer = post_response(client, saml_gw, idp.respond(request, "root@example.edu"))
    assert answer.status_code == 303 and answer.headers["Location"] == "/portal#usage"
    session = answer.cookies.get("llmgw_session")
    assert session and sets_session(answer)
    cookie = next(c for c in answer.raw.headers.getlist("Set-Cookie") if c.startswith("llmgw_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "expires=" in cookie.lower()
    user = stored_users(saml_gw.db_path)["root@example.edu"]
    assert user["display_name"] == "Test Root" and user["email"] == "root@example.edu" and user["is_admin"] == 1
    me = client.get(saml_gw.url + "/portal/api/me", timeout=10).json()
    assert me["username"] == "root@example.edu" and me["is_admin"] is True and me["dev_login"] is False
    assert "sk-lgw" not in saml_gw.log() and session not in saml_gw.log()


def _refusals(idp: LoopbackIdP, gw: GatewayProcess) -> dict[str, Callable[[], tuple[requests.Session, str]]]:
    """Each case: start a login as a browser, then build the bad answer the attacker sends."""
    def login() -> tuple[requests.Session, Request]:
        return begin_login(gw, idp)

    def unsigned() -> tuple[requests.Session, str]:
        client, request = login()
        return client, idp.respond(request, "alice@example.edu", sign=False)

    def modified() -> tuple[requests.Session, str]:
        client, request = login()
        root = _xml(idp.respond(request, "sam@example.edu"))
        _set_attribute(root.find("saml:Assertion", NS), AFFILIATION, "faculty")
        return client, _b64(root)

    def wrapped(inside_extensions: bool) -> Callable[[], tuple[requests.Session, str]]:
        def build() -> tuple[requests.Session, str]:
            client, request = login()
            root = _xml(idp.respond(request, "sam@example.edu"))
            signed = root.find("saml:Assertion", NS)
            evil = copy.deepcopy(signed)
            evil.set("ID", "_evil" + signed.get("ID"))
            evil.remove(evil.find("ds:Signature", NS))
            _set_attribute(evil, EPPN, "root@example.edu")
            _set_attribute(evil, AFFILIATION, "faculty")
            if inside_extensions:
                extensions = etree.Element(f"{{{NS['samlp']}}}Extensions")
                extensions.append(signed)
                root.insert(1, extensions)
                root.append(evil)
            else:
                signed.addprevious(evil)
            return client, _b64(root)
        return build

    def changed(change: Callable[[samlp.Response], None]) -> Callable[[], tuple[requests.Session, str]]:
        def build() -> tuple[requests.Session, str]:
            client, request = login()
            return client, idp.respond(request, "alice@example.edu", change=change)
        return build

    def no_audience(response: samlp.Response) -> None:
        response.assertion[0].conditions.audience_restriction = []

    def recipient_to(value: str | None) -> Callable[[samlp.Response], None]:
        def change(response: samlp.Response) -> None:
            for confirmation in response.assertion[0].subject.subject_confirmation:
                confirmation.subject_confirmation_data.recipient = value
        return change

    def audience(response: samlp.Response) -> None:
        response.assertion[0].conditions.audience_restriction[0].audience[0].text = "https://other-sp.example/saml"

    def destination(response: samlp.Response) -> None:
        response.destination = "https://other-sp.example/saml/acs"

    def near_destination(response: samlp.Response) -> None:
        response.destination = gw.url + "/saml/acs-elsewhere"

    def recipient(response: samlp.Response) -> None:
        for confirmation in response.assertion[0].subject.subject_confirmation:
            confirmation.subject_confirmation_data.recipient = "https://other-sp.example/saml/acs"

    def other_request() -> tuple[requests.Session, str]:
        client, _ = login()
        _, other = begin_login(gw, idp)
        return client, idp.respond(other, "alice@example.edu")

    def unsolicited_without_state() -> tuple[requests.Session, str]:
        _, request = login()
        return requests.Session(), idp.respond(request, "alice@example.edu", in_response_to=None)

    def unsolicited_with_state() -> tuple[requests.Session, str]:
        client, request = login()
        return client, idp.respond(request, "alice@example.edu", in_response_to=None)

    return {
        "unsigned": unsigned,
        "modified assertion": modified,
        "wrapping: second unsigned assertion": wrapped(False),
        "wrapping: signed assertion moved into Extensions": wrapped(True),
        "expired": changed(expire),
        "wrong audience": changed(audience),
        "wrong destination": changed(destination),
        "destination only starting with ours": changed(near_destination),
        "wrong recipient": changed(recipient),
        "no audience restriction": changed(no_audience),
        "recipient only starting with ours": changed(recipient_to(gw.url + "/saml/acs-elsewhere")),
        "recipient only containing ours": changed(recipient_to("https://other.example/acs?return=" + gw.url
                                                               + "/saml/acs")),
        "no recipient": changed(recipient_to(None)),
        "answer to another login": other_request,
        "unsolicited, no login state": unsolicited_without_state,
        "unsolicited, with a login state": unsolicited_with_state,
        "not base64": lambda: (login()[0], "%%% not a response %%%"),
    }


def test_bad_responses_are_refused_without_a_session(saml_gw: GatewayProcess, idp: LoopbackIdP, subtests) -> None:
    for name, build in _refusals(idp, saml_gw).items():
        with subtests.test(name):
            client, response = build()
            answer = post_response(client, saml_gw, response)
            assert answer.status_code == 400, answer.text
            assert "Login failed" in answer.text and "<!doctype html>" in answer.text.lower()
            assert not sets_session(answer)
            assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 401
    assert stored_users(saml_gw.db_path) == {}
    assert "SAML response refused" in saml_gw.log()


def test_replayed_assertion_is_refused(saml_gw: GatewayProcess, idp: LoopbackIdP) -> None:
    client, request = begin_login(saml_gw, idp)
    state = client.cookies["llmgw_login"]
    response = idp.respond(request, "alice@example.edu")
    first = post_response(client, saml_gw, response)
    assert first.status_code == 303 and sets_session(first)
    replayer = requests.Session()
    replayer.cookies.set("llmgw_login", state)
    again = post_response(replayer, saml_gw, response)
    assert again.status_code == 400 and "already used" in again.text
    assert not sets_session(again)
    assert "replayed" in saml_gw.log()


def test_ineligible_person_sees_why_and_gets_nothing(saml_gw: GatewayProcess, idp: LoopbackIdP) -> None:
    client, request = begin_login(saml_gw, idp)
    answer = post_response(client, saml_gw, idp.respond(request, "sam@example.edu"))
    assert answer.status_code == 403
    assert "You cannot use this service" in answer.text
    assert "employee or faculty" in answer.text and "student" in answer.text
    assert not sets_session(answer)
    assert stored_users(saml_gw.db_path) == {}


@pytest.mark.parametrize("target", [
    "//evil.host/x", "https://evil.host/", "/\\evil.host", "\\\\evil.host", "javascript:alert(1)",
    "/\r\nLocation: https://evil.host", "http:/evil.host", " //evil.host", "/\t/evil.host", "evil.host",
])
def test_next_never_leaves_the_site(saml_gw: GatewayProcess, idp: LoopbackIdP, target: str) -> None:
    client, request = begin_login(saml_gw, idp, target)
    answer = post_response(client, saml_gw, idp.respond(request, "alice@example.edu"))
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/portal"
    again = client.get(saml_gw.url + "/saml/login", params={"next": target}, allow_redirects=False, timeout=10)
    assert again.status_code == 302 and again.headers["Location"] == "/portal"


def test_logout_ends_the_session_everywhere(saml_gw: GatewayProcess, idp: LoopbackIdP) -> None:
    client, request = begin_login(saml_gw, idp)
    post_response(client, saml_gw, idp.respond(request, "alice@example.edu"))
    session = client.cookies["llmgw_session"]
    assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 200
    answer = client.post(saml_gw.url + "/saml/logout", data={"_xsrf": _logout_form_xsrf(client, saml_gw)},
                         timeout=10)
    assert answer.status_code == 200 and "You are logged out" in answer.text
    assert answer.url == saml_gw.url + "/portal/logged-out"
    assert len(idp.logouts) >= 1
    stolen = requests.get(saml_gw.url + "/portal/api/me", cookies={"llmgw_session": session}, timeout=10)
    assert stolen.status_code == 401 and stolen.json()["error"]["code"] == "not_logged_in"


def _logout_form_xsrf(client: requests.Session, gw: GatewayProcess, path: str = "/saml/logout") -> str:
    """The logout page (GET) only shows the button; its form carries the XSRF token."""
    page = client.get(gw.url + path, timeout=10)
    assert page.status_code == 200 and 'method="post"' in page.text, page.text
    return page.text.split('name="_xsrf" value="', 1)[1].split('"', 1)[0]


def test_logout_is_a_post_with_the_xsrf_token(saml_gw: GatewayProcess, idp: LoopbackIdP) -> None:
    client, request = begin_login(saml_gw, idp)
    post_response(client, saml_gw, idp.respond(request, "alice@example.edu"))
    for path in ("/portal/logout", "/saml/logout"):
        xsrf = _logout_form_xsrf(client, saml_gw, path)
        assert "alice@example.edu" in client.get(saml_gw.url + path, timeout=10).text
        assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 200, "a GET logs no one out"
        forged = requests.post(saml_gw.url + path, cookies={"llmgw_session": client.cookies["llmgw_session"]},
                               allow_redirects=False, timeout=10)
        assert forged.status_code == 403, "a cross-site POST without the token is refused"
        assert client.post(saml_gw.url + path, allow_redirects=False, timeout=10).status_code == 403
        assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 200
    answer = client.post(saml_gw.url + "/portal/logout", data={"_xsrf": xsrf}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(idp.url + "/slo")
    assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 401


def test_idp_logout_requests_must_be_signed(saml_gw: GatewayProcess, idp: LoopbackIdP) -> None:
    client, request = begin_login(saml_gw, idp)
    post_response(client, saml_gw, idp.respond(request, "alice@example.edu"))
    entity_id, sls = saml_gw.url + "/saml/metadata", saml_gw.url + "/saml/sls"
    unsigned = client.get(idp.logout_request_url(entity_id, sls, sign=False), allow_redirects=False, timeout=10)
    assert unsigned.status_code == 400 and "Logout not confirmed" in unsigned.text
    assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 200, "still logged in"
    assert "unsigned logout request" in saml_gw.log()
    signed = client.get(idp.logout_request_url(entity_id, sls, sign=True), allow_redirects=False, timeout=10)
    assert signed.status_code == 302 and signed.headers["Location"].startswith(idp.url + "/slo")
    assert "SAMLResponse=" in signed.headers["Location"]
    assert client.get(saml_gw.url + "/portal/api/me", timeout=10).status_code == 401


def test_forged_or_foreign_session_cookies_are_refused(saml_gw: GatewayProcess) -> None:
    claims = {"sub": "root@example.edu", "iss": saml_gw.url, "aud": "llmgw-session", "exp": 4102444800, "jti": "x"}

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    for token in (jwt.encode(claims, "not-the-secret-0123456789abcdefghij", algorithm="HS256"),
                  f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.",
                  jwt.encode({**claims, "aud": "llmgw-saml-login"}, SESSION_SECRET, algorithm="HS256"),
                  jwt.encode({**claims, "exp": 1}, SESSION_SECRET, algorithm="HS256")):
        answer = requests.get(saml_gw.url + "/portal/api/me", cookies={"llmgw_session": token}, timeout=10)
        assert answer.status_code == 401
    good = jwt.encode(claims, SESSION_SECRET, algorithm="HS256")
    assert requests.get(saml_gw.url + "/portal/api/me", cookies={"llmgw_session": good}, timeout=10).status_code \
        == 401, "a well-signed token of a person the store does not know is refused too"


def _serve(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmgateway", "serve", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_start_is_refused_without_a_good_secret_or_with_dev_login_on_all_interfaces(tmp_path: Path,
                                                                                   idp: LoopbackIdP) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}
    base = f'[store]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n[usage]\nspool_dir = "{tmp_path / "spool"}"\n'
    config = tmp_path / "gateway.toml"
    config.write_text(f'[server]\nlisten = "0.0.0.0:{free_port()}"\n{base}[portal]\nenabled = true\n'
                      "dev_login = true\n")
    result = _serve(config, env)
    assert result.returncode == 2 and "portal.dev_login" in result.stderr and "loopback" in result.stderr
    config.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n{base}[portal]\nenabled = true\n'
                      f'public_url = "https://llm.example.edu"\n[saml]\nidp_metadata_url = "{idp.url}/metadata"\n')
    result = _serve(config, {**env, "LLMGW_SESSION_SECRET": "short"})
    assert result.returncode == 2 and "session secret must be at least 32" in result.stderr
