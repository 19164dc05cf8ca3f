"""What the portal test modules share: a gateway set up for SAML against the test IdP, a browser-less
SAML client, and readers of the store's users."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from .conftest import GatewayProcess, model_toml
from .idp import LoopbackIdP, Request, make_key_pair

SESSION_SECRET = "test-session-secret-0123456789abcdef"
SESSION_COOKIE = "llmgw_session"


def start_saml_gateway(start_gateway: Callable[..., GatewayProcess], idp: LoopbackIdP, upstream: str,
                       saml: str = "", portal: str = "") -> GatewayProcess:
    """A gateway whose portal logs in through `idp`, signing its requests with a key of its own."""
    gw = start_gateway(model_toml("test-model", [upstream]) + model_toml("other-model", [upstream]),
                       env={"LLMGW_SESSION_SECRET": SESSION_SECRET}, run=False)
    key, cert = make_key_pair(gw.workdir, "sp")
    gw.config_path.write_text(gw.config_path.read_text() + (
        f'\n[portal]\nenabled = true\npublic_url = "{gw.url}"\n{portal}\n'
        f'[saml]\nidp_metadata_url = "{idp.url}/metadata"\nsp_cert_file = "{cert}"\nsp_key_file = "{key}"\n'
        f'sign_requests = true\nadmin_values = ["llm-admins"]\n{saml}\n'
    ))
    gw.start()
    idp.trust_sp(requests.get(gw.url + "/saml/metadata", timeout=10).text)
    return gw


def begin_login(gw: GatewayProcess, idp: LoopbackIdP, next_path: str = "/portal") -> tuple[requests.Session, Request]:
    """GET /saml/login as a browser would; the IdP reads the AuthnRequest it was sent."""
    client = requests.Session()
    answer = client.get(gw.url + "/saml/login", params={"next": next_path}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    request = idp.parse_request(query["SAMLRequest"], query.get("RelayState", ""), query.get("SigAlg"),
                                query.get("Signature"))
    return client, request


def post_response(client: requests.Session, gw: GatewayProcess, saml_response: str) -> requests.Response:
    return client.post(gw.url + "/saml/acs", data={"SAMLResponse": saml_response}, allow_redirects=False,
                       timeout=10)


def sets_session(answer: requests.Response) -> bool:
    return any(c.startswith(SESSION_COOKIE + "=") and not c.startswith(SESSION_COOKIE + '="";')
               for c in answer.raw.headers.getlist("Set-Cookie"))


def stored_users(db_path: Path) -> dict[str, dict]:
    if not db_path.exists():
        return {}
    conn = sqlite3.connect(db_path, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return {r["username"]: dict(r) for r in conn.execute("SELECT * FROM users")}
    finally:
        conn.close()
