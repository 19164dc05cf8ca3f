"""What the portal test modules share: a gateway set up for SAML against the test IdP, a browser-less
SAML client, and readers of the store's users."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from tests.conftest import GatewayProcess
from tests.idp import LoopbackIdP, Request

SESSION_COOKIE = "llmgw_session"


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
