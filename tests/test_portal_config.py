"""[portal] and [saml]: every bad value stops the start with a message naming the setting."""

from __future__ import annotations

import tomllib

import pytest

from llmgateway.auth.saml import map_identity
from llmgateway.auth.sessions import Sessions
from llmgateway.config import PORTAL_KEYS, SAML_KEYS, ConfigError, SamlConfig, load_config, parse_config
from llmgateway.portal.service import safe_next
from tests.conftest import ROOT

SAML = {"idp_metadata_file": "/etc/idp.xml"}
PORTAL = {"enabled": True, "public_url": "https://llm.example.edu"}


def parse(portal: dict | None = None, saml: dict | None = None, listen: str = "127.0.0.1:8000"):
    return parse_config({"server": {"listen": listen}, "portal": {**PORTAL, **(portal or {})},
                         "saml": {**SAML, **(saml or {})}}).portal


def test_defaults_and_off_by_default() -> None:
    assert parse_config({}).portal is None
    assert parse_config({"portal": {"enabled": False, "dev_login": True}}).portal is None
    portal = parse()
    assert portal.secure_cookies is True and portal.max_keys_per_user == 10 and portal.session_hours == 8
    assert portal.saml.username_attribute == "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"
    assert portal.saml.eligible_values == ("employee", "faculty") and portal.saml.allow_unsolicited is False
    dev = parse_config({"portal": {"enabled": True, "dev_login": True}}).portal
    assert dev.public_url == "http://127.0.0.1:8000" and dev.secure_cookies is False
    assert parse({"public_url": "https://gw.example.edu/llm/"}).base_path == "/llm"


@pytest.mark.parametrize(("portal", "saml", "listen", "named"), [
    ({"dev_login": True}, {}, "0.0.0.0:8000", "portal.dev_login"),
    ({"dev_login": True}, {}, "[::]:8000", "portal.dev_login"),
    ({"dev_login": True}, {}, "10.0.0.5:8000", "portal.dev_login"),
    ({"public_url": ""}, {}, "127.0.0.1:8000", "portal.public_url"),
    ({"public_url": "ftp://x"}, {}, "127.0.0.1:8000", "portal.public_url"),
    ({"max_keys_per_user": 0}, {}, "127.0.0.1:8000", "portal.max_keys_per_user"),
    ({"session_hours": 0}, {}, "127.0.0.1:8000", "portal.session_hours"),
    ({"terms_version": " "}, {}, "127.0.0.1:8000", "portal.terms_version"),
    ({"secure_cookies": "maybe"}, {}, "127.0.0.1:8000", "portal.secure_cookies"),
    ({"colour": "red"}, {}, "127.0.0.1:8000", "portal.colour"),
    ({}, {"idp_metadata_file": ""}, "127.0.0.1:8000", "saml.idp_metadata_file or saml.idp_metadata_url"),
    ({}, {"idp_metadata_url": "https://idp/x"}, "127.0.0.1:8000", "set only one"),
    ({}, {"signature_algorithm": "rsa-sha1"}, "127.0.0.1:8000", "saml.signature_algorithm"),
    ({}, {"digest_algorithm": "md5"}, "127.0.0.1:8000", "saml.digest_algorithm"),
    ({}, {"sp_cert_file": "/x.crt"}, "127.0.0.1:8000", "saml.sp_cert_file"),
    ({}, {"sign_requests": True}, "127.0.0.1:8000", "saml.sign_requests"),
    ({}, {"eligible_values": "faculty"}, "127.0.0.1:8000", "saml.eligible_values"),
    ({}, {"admin_values": [""]}, "127.0.0.1:8000", "saml.admin_values"),
    ({}, {"username_attribute": ""}, "127.0.0.1:8000", "saml.username_attribute"),
    ({}, {"want_assertions_signed": False}, "127.0.0.1:8000", "saml.want_assertions_signed"),
])
def test_bad_values_name_the_setting(portal: dict, saml: dict, listen: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        parse(portal, saml, listen)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
def test_dev_login_on_loopback(host: str) -> None:
    assert parse_config({"server": {"listen": f"{host}:8000"}, "portal": {"enabled": True, "dev_login": True}}).portal


def test_the_example_file_documents_every_setting() -> None:
    text = (ROOT / "conf" / "gateway.example.toml").read_text()
    for key in PORTAL_KEYS | SAML_KEYS:
        assert f"\n{key} =" in text or f"\n# {key} =" in text, f"{key} is not in the example file"
    raw = tomllib.loads(text)
    assert parse_config(raw).portal is None
    raw["portal"].update(enabled=True, public_url="https://llm.example.edu")
    raw["saml"]["idp_metadata_file"] = "/etc/llmgateway/idp-metadata.xml"
    portal = parse_config(raw).portal
    assert portal is not None and portal.saml == SamlConfig(idp_metadata_file="/etc/llmgateway/idp-metadata.xml")


def test_public_url_from_the_environment() -> None:
    config = load_config(None, {"LLMGW_PUBLIC_URL": "https://gw.example.edu"})
    assert config.portal is None
    with pytest.raises(ConfigError, match="saml.idp_metadata"):
        parse_config({"portal": {"enabled": True, "public_url": "https://gw.example.edu"}})


@pytest.mark.parametrize(("value", "expected"), [
    ("/portal#usage", "/portal#usage"), ("/portal?x=1", "/portal?x=1"), (None, "/portal"), ("", "/portal"),
    ("//evil.host", "/portal"), ("///evil.host", "/portal"), ("/\\evil.host", "/portal"),
    ("https://evil.host/", "/portal"), ("javascript:alert(1)", "/portal"), ("/ok\r\nSet-Cookie: x", "/portal"),
    ("evil.host", "/portal"), ("/\u3000/evil", "/portal"),
])
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_identity_mapping_rules() -> None:
    saml = parse(saml={"admin_values": ["llm-admins"]}).saml
    attrs = {"urn:oid:1.3.6.1.4.1.5923.1.1.1.6": ["ann@example.edu"], "urn:oid:1.3.6.1.4.1.5923.1.1.1.1": ["staff"],
             "urn:oid:1.3.6.1.4.1.5923.1.5.1.1": ["llm-admins", "x"]}
    person = map_identity(attrs, "nid", saml)
    assert person.username == "ann@example.edu" and person.is_admin and not person.eligible
    assert "employee or faculty" in person.reason and "staff" in person.reason
    everyone = parse(saml={"eligible_values": [], "username_attribute": "NameID"}).saml
    assert map_identity({}, "nid-1", everyone).eligible and map_identity({}, "nid-1", everyone).username == "nid-1"


def test_session_tokens_of_one_kind_do_not_pass_as_another() -> None:
    sessions = Sessions("s" * 40, 3600, "https://llm.example.edu")
    token, claims = sessions.issue("ann")
    assert sessions.verify(token)["sub"] == "ann" and claims["exp"] - claims["iat"] == 3600
    state = sessions.issue_login_state("ONELOGIN_1", "/portal")
    assert sessions.verify(state) is None and sessions.verify_login_state(token) is None
    assert sessions.verify_login_state(state)["rid"] == "ONELOGIN_1"
    assert sessions.verify_login_state(state, "logout") is None
    assert Sessions("t" * 40, 3600, "https://llm.example.edu").verify(token) is None
    assert Sessions("s" * 40, 3600, "https://other.example.edu").verify(token) is None
    expired, _ = sessions.issue("ann", now=1000.0)
    assert sessions.verify(expired) is None
