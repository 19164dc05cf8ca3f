"""A caller of the admin API for tests: a bearer token, or a logged-in browser session with XSRF."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.conftest import GatewayProcess

BOOTSTRAP = "bootstrap-" + "b" * 40
API = "/admin/api/v1"
ADMIN_EXTRA = "[portal]\nenabled = true\ndev_login = true\n"


@dataclass
class AdminClient:
    """Calls /admin/api/v1 as a token holder (`token`) or as a browser (`session` with its cookies)."""

    gw: GatewayProcess
    token: str | None = None
    session: requests.Session = field(default_factory=requests.Session)
    xsrf: bool = True

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             params: dict | None = None) -> tuple[int, Any]:
        headers = {}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.xsrf and "_xsrf" in self.session.cookies:
            headers["X-XSRFToken"] = self.session.cookies["_xsrf"]
        if body is not None:
            raw = json.dumps(body).encode()
        answer = self.session.request(method, self.gw.url + API + path, data=raw, headers=headers, params=params,
                                      timeout=30)
        if answer.headers.get("Content-Type", "").startswith("application/json"):
            return answer.status_code, answer.json()
        return answer.status_code, answer.text

    def ok(self, method: str, path: str, body: Any = None, status: int = 200, **kwargs: Any) -> Any:
        code, answer = self.call(method, path, body, **kwargs)
        assert code == status, (method, path, code, answer)
        return answer


def browser(gw: GatewayProcess, username: str, admin: bool) -> AdminClient:
    """Log in through the development login, as an admin (the IdP rule's stand-in) or not."""
    session = requests.Session()
    page = session.get(gw.url + "/portal/dev-login", timeout=10)
    xsrf = page.text.split('name="_xsrf" value="', 1)[1].split('"', 1)[0]
    form = {"_xsrf": xsrf, "username": username, "next": "/portal"}
    if admin:
        form["admin"] = "on"
    answer = session.post(gw.url + "/portal/dev-login", data=form, allow_redirects=False, timeout=10)
    assert answer.status_code == 303, answer.text
    session.get(gw.url + "/portal", timeout=10)
    return AdminClient(gw, session=session)


def first_admin(gw: GatewayProcess, username: str = "root") -> AdminClient:
    """The bootstrap token's one act: make `username` the first admin; a client with their new token."""
    created = AdminClient(gw, token=BOOTSTRAP).ok("POST", "/tokens", {"name": "tests", "owner": username}, 201)
    assert created["record"]["owner"] == username
    return AdminClient(gw, token=created["token"])


def error_of(answer: Any) -> dict:
    assert isinstance(answer, dict) and set(answer["error"]) == {"message", "type", "param", "code"}, answer
    return answer["error"]
