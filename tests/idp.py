"""A real SAML identity provider on loopback, for the portal tests.

Built on pysaml2 (which signs with Debian's xmlsec1), with keys and a certificate made here,
its own login form, HTTP-Redirect single sign-on, HTTP-POST responses and HTTP-Redirect single
logout. It runs in a thread of the test process. `respond` also builds responses for the
negative tests: unsigned, or changed before (or after) they are signed; `logout_request_url`
sends IdP-initiated logout requests, signed or not.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, samlp
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.s_utils import rndstr
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_TRANSIENT, NameID
from saml2.server import Server
from saml2.sigver import pre_signature_part
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

XMLSEC1 = "/usr/bin/xmlsec1"
ASSERTION_CLASS = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"
PASSWORD_AUTHN = {"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"}


def make_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh RSA key and self-signed certificate, as PEM files (key, cert)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass
class Person:
    password: str
    attributes: dict[str, list[str]]


@dataclass
class Request:
    """An AuthnRequest as the IdP read it."""

    id: str
    issuer: str
    acs_url: str
    relay_state: str


def saml_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class LoopbackIdP:
    """pysaml2 IdP served by a ThreadingHTTPServer on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.key_file, self.cert_file = make_key_pair(folder, "idp")
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.entity_id = self.url + "/metadata"
        self.people: dict[str, Person] = {}
        self.logouts: list[str] = []
        self.config = IdPConfig().load({
            "entityid": self.entity_id,
            "key_file": str(self.key_file),
            "cert_file": str(self.cert_file),
            "xmlsec_binary": XMLSEC1,
            "metadata": {"inline": []},
            "service": {"idp": {
                "endpoints": {
                    "single_sign_on_service": [(self.url + "/sso", BINDING_HTTP_REDIRECT)],
                    "single_logout_service": [(self.url + "/slo", BINDING_HTTP_REDIRECT)],
                },
                "policy": {"default": {"lifetime": {"minutes": 5}, "attribute_restrictions": None,
                                       "name_form": NAME_FORMAT_URI}},
                "name_id_format": [NAMEID_FORMAT_TRANSIENT],
            }},
        })
        self.server = Server(config=self.config)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-idp", daemon=True)
        self.thread.start()

    def add_person(self, username: str, affiliation: list[str], password: str = "secret", **extra: list[str]) -> str:
        """Register a person; their ePPN is the username. Returns the username."""
        attributes = {"eduPersonPrincipalName": [username], "eduPersonAffiliation": affiliation,
                      "displayName": [f"Test {username.split('@')[0].title()}"], "mail": [username], **extra}
        self.people[username] = Person(password, attributes)
        return username

    def metadata(self) -> str:
        return str(entity_descriptor(self.config))

    def trust_sp(self, sp_metadata: str) -> None:
        """Load an SP's metadata (the gateway's /saml/metadata) so its requests are accepted."""
        self.server.metadata.load("inline", sp_metadata)

    def parse_request(self, saml_request: str, relay_state: str = "", sigalg: str | None = None,
                      signature: str | None = None) -> Request:
        parsed = self.server.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT, relay_state=relay_state,
                                                 sigalg=sigalg, signature=signature)
        message = parsed.message
        return Request(message.id, message.issuer.text, message.assertion_consumer_service_url, relay_state)

    def respond(self, request: Request, username: str, *, sign: bool = True, in_response_to: str | None = "",
                change: Callable[[samlp.Response], None] | None = None) -> str:
        """A base64 SAMLResponse for `request`, its assertion signed unless `sign` is false.

        `change` edits the response before it is signed (so the signature stays valid);
        `in_response_to=None` makes it unsolicited.
        """
        person = self.people[username]
        name_id = NameID(format=NAMEID_FORMAT_TRANSIENT, text=rndstr(24))
        irt = request.id if in_response_to == "" else in_response_to
        xml = str(self.server.create_authn_response(
            person.attributes, irt, request.acs_url, request.issuer, name_id=name_id, authn=PASSWORD_AUTHN,
            sign_assertion=False, sign_response=False,
        ))
        response = samlp.response_from_string(xml)
        if irt is None:
            response.in_response_to = None
            for confirmation in response.assertion[0].subject.subject_confirmation:
                confirmation.subject_confirmation_data.in_response_to = None
        if change is not None:
            change(response)
        if not sign:
            return base64.b64encode(response.to_string()).decode()
        assertion = response.assertion[0]
        assertion.signature = pre_signature_part(assertion.id, self.server.sec.my_cert, 1, digest_alg=DIGEST_SHA256,
                                                 sign_alg=SIG_RSA_SHA256)
        signed = self.server.sec.sign_statement(response.to_string().decode(), ASSERTION_CLASS, node_id=assertion.id)
        return base64.b64encode(signed.encode()).decode()

    def logout_request_url(self, sp_entity_id: str, sls_url: str, sign: bool) -> str:
        """An IdP-initiated LogoutRequest to an SP's single logout service, as an HTTP-Redirect URL,
        its query signed (as SAML's redirect binding signs) unless `sign` is false."""
        request_id, request = self.server.create_logout_request(
            sls_url, sp_entity_id, name_id=NameID(format=NAMEID_FORMAT_TRANSIENT, text=rndstr(24)), sign=False)
        args = self.server.apply_binding(BINDING_HTTP_REDIRECT, str(request), sls_url, "", sign=sign,
                                         sigalg=SIG_RSA_SHA256 if sign else None)
        return dict(args["headers"])["Location"]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def expire(response: samlp.Response) -> None:
    """Make the assertion's validity end an hour ago (well past python3-saml's 5 minutes of drift)."""
    past, older = saml_time(time.time() - 3600), saml_time(time.time() - 7200)
    assertion = response.assertion[0]
    response.issue_instant = assertion.issue_instant = older
    assertion.conditions.not_before = older
    assertion.conditions.not_on_or_after = past
    for confirmation in assertion.subject.subject_confirmation:
        confirmation.subject_confirmation_data.not_on_or_after = past
    for statement in assertion.authn_statement:
        statement.authn_instant = older


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{body}</body></html>").encode()


def _handler(idp: LoopbackIdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            """Quiet: the tests read outcomes, not the IdP's access log."""

        def reply(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def query(self) -> dict[str, str]:
            return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlsplit(self.path).path
            try:
                if path == "/metadata":
                    self.reply(200, idp.metadata().encode(), "application/samlmetadata+xml")
                elif path == "/sso":
                    self.login_form(self.query())
                elif path == "/slo":
                    self.single_logout(self.query())
                else:
                    self.reply(404, _page("Not found", ""))
            except Exception as exc:
                self.reply(400, _page("IdP error", f"<p>{html.escape(str(exc))}</p>"))

        def login_form(self, query: dict[str, str]) -> None:
            idp.parse_request(query["SAMLRequest"], query.get("RelayState", ""), query.get("SigAlg"),
                              query.get("Signature"))
            hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in query.items())
            self.reply(200, _page("Test IdP login", (
                f'<form method="post" action="/sso">{hidden}'
                '<label>Username <input name="username" id="username"></label>'
                '<label>Password <input name="password" id="password" type="password"></label>'
                '<button type="submit" id="login">Log in</button></form>')))

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            try:
                request = idp.parse_request(form["SAMLRequest"], form.get("RelayState", ""), form.get("SigAlg"),
                                            form.get("Signature"))
            except Exception as exc:
                self.reply(400, _page("IdP error", f"<p>{html.escape(str(exc))}</p>"))
                return
            person = idp.people.get(form.get("username", ""))
            if person is None or not secrets.compare_digest(person.password, form.get("password", "")):
                self.reply(401, _page("Wrong username or password", ""))
                return
            response = idp.respond(request, form["username"])
            args = idp.server.apply_binding(BINDING_HTTP_POST, base64.b64decode(response).decode(), request.acs_url,
                                            request.relay_state, response=True)
            self.reply(200, args["data"].encode())

        def single_logout(self, query: dict[str, str]) -> None:
            request = idp.server.parse_logout_request(query["SAMLRequest"], BINDING_HTTP_REDIRECT)
            idp.logouts.append(request.message.name_id.text)
            response = idp.server.create_logout_response(request.message, [BINDING_HTTP_REDIRECT])
            binding, destination = idp.server.pick_binding("single_logout_service", [BINDING_HTTP_REDIRECT],
                                                           "spsso", entity_id=request.message.issuer.text)
            args = idp.server.apply_binding(binding, str(response), destination, query.get("RelayState", ""),
                                            response=True)
            self.reply(303, b"", headers=dict(args["headers"]))

    return Handler
