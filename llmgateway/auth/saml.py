"""The SAML service provider (python3-saml, strict mode) and the reading of the person it returns.

Every call here is blocking (XML parsing and xmlsec signature checks, metadata download), so the
handlers run them through `Gateway.in_thread`. python3-saml checks the signature of the
assertion (always required), that there is exactly one assertion, the issuer, validity times and
`InResponseTo`. Where it is loose, this module is strict (the SAML 2.0 Web Browser SSO profile
asks for both): the assertion must carry an AudienceRestriction naming our entity ID (python3-saml
accepts an assertion with none), and every bearer SubjectConfirmationData must carry a Recipient
equal to our ACS URL (python3-saml accepts a missing one and checks a present one as a
substring). It also requires the response to answer the request this browser started (unless
unsolicited responses are allowed), a Destination equal to our ACS URL, and signed IdP logout
requests (`saml.want_logout_requests_signed`, on by default: an unsigned one would let any page
log a person out). Replay of an assertion ID is refused by the caller through the store's
claims, so it holds across replicas.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from ..config import DIGEST_ALGORITHMS, SIGNATURE_ALGORITHMS, ConfigError, PortalConfig, SamlConfig

ASSERTION_NAMESPACE = "saml-assertion"
ACS_PATH = "/saml/acs"
SLS_PATH = "/saml/sls"
METADATA_PATH = "/saml/metadata"
FALLBACK_ASSERTION_LIFETIME = 3600.0
NS = {"samlp": "urn:oasis:names:tc:SAML:2.0:protocol", "saml": "urn:oasis:names:tc:SAML:2.0:assertion"}
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"


class SamlError(Exception):
    """A SAML message was refused; the message says why, for the log (never the message itself)."""


@dataclass(frozen=True)
class Identity:
    """A person as the IdP described them, read through the configured attribute mapping."""

    username: str
    display_name: str
    email: str
    is_admin: bool
    eligible: bool
    reason: str = ""


@dataclass(frozen=True)
class Assertion:
    """What the gateway keeps of a valid SAML response."""

    identity: Identity
    assertion_id: str
    expires: float
    name_id: str
    name_id_format: str
    session_index: str


def map_identity(attributes: Mapping[str, list[str]], name_id: str, saml: SamlConfig) -> Identity:
    """Apply the attribute mapping, the eligibility rule and the admin rule.

    The username comes from `username_attribute` (the NameID only if that attribute is set to
    "NameID"); a response without it is refused, since a username is what keys belong to.
    """
    def first(name: str) -> str:
        values = attributes.get(name) or []
        return str(values[0]).strip() if values else ""

    username = name_id.strip() if saml.username_attribute == "NameID" else first(saml.username_attribute)
    if not username:
        raise SamlError(f"the response carries no {saml.username_attribute} attribute (the username)")
    eligible, reason = True, ""
    if saml.eligible_values:
        held = {str(v).strip() for v in attributes.get(saml.eligible_attribute) or []}
        if not held & set(saml.eligible_values):
            eligible = False
            reason = saml.ineligible_message or (
                "This service is open to people whose affiliation is "
                f"{' or '.join(saml.eligible_values)}; your identity provider did not send one of these"
                + (f" (it sent: {', '.join(sorted(held))})." if held else ".")
            )
    admin_held = {str(v).strip() for v in attributes.get(saml.admin_attribute) or []}
    return Identity(
        username=username,
        display_name=first(saml.display_name_attribute),
        email=first(saml.email_attribute),
        is_admin=bool(set(saml.admin_values) & admin_held),
        eligible=eligible,
        reason=reason,
    )


def _read(path: str, setting: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path!r}: {exc.strerror}") from None


class ServiceProvider:
    """The gateway's SAML SP: settings built once at start from the config and the IdP metadata."""

    def __init__(self, portal: PortalConfig, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.config = portal.saml
        self.public_url = portal.public_url
        parts = urlsplit(portal.public_url)
        self._https = "on" if parts.scheme == "https" else "off"
        self._host = parts.netloc
        self._base_path = portal.base_path
        self.acs_url = portal.public_url + ACS_PATH
        self.entity_id = self.config.sp_entity_id or portal.public_url + METADATA_PATH
        try:
            self.settings = OneLogin_Saml2_Settings(self._settings_dict(self._idp_settings(), env))
        except OneLogin_Saml2_Error as exc:
            raise ConfigError(f"[saml]: the service provider settings are invalid: {exc}") from None

    def _idp_settings(self) -> dict[str, Any]:
        saml = self.config
        if saml.idp_metadata_url:
            setting = "saml.idp_metadata_url"
            try:
                xml = OneLogin_Saml2_IdPMetadataParser.get_metadata(saml.idp_metadata_url,
                                                                    timeout=saml.metadata_timeout)
            except Exception as exc:
                raise ConfigError(f"{setting}: cannot fetch the IdP metadata: {exc}") from None
        else:
            setting = "saml.idp_metadata_file"
            xml = _read(saml.idp_metadata_file, setting)
        try:
            parsed = OneLogin_Saml2_IdPMetadataParser.parse(xml, entity_id=saml.idp_entity_id or None)
        except Exception as exc:
            raise ConfigError(f"{setting}: not valid IdP metadata: {exc}") from None
        idp = parsed.get("idp") or {}
        if not idp.get("entityId") or not idp.get("singleSignOnService", {}).get("url"):
            raise ConfigError(f"{setting}: no IdP with an HTTP-Redirect single sign-on service"
                              + (f" and entity ID {saml.idp_entity_id!r}" if saml.idp_entity_id else ""))
        if not idp.get("x509cert") and not idp.get("x509certMulti"):
            raise ConfigError(f"{setting}: the IdP metadata has no signing certificate")
        return idp

    def _settings_dict(self, idp: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        saml = self.config
        cert = key = ""
        if saml.sp_cert_file:
            cert = _read(saml.sp_cert_file, "saml.sp_cert_file")
            if saml.sp_key_env:
                key = env.get(saml.sp_key_env, "")
                if not key:
                    raise ConfigError(f"saml.sp_key_env: environment variable {saml.sp_key_env} is not set")
            else:
                key = _read(saml.sp_key_file, "saml.sp_key_file")
        signing = bool(key) and saml.sign_requests
        return {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": self.entity_id,
                "assertionConsumerService": {"url": self.acs_url,
                                             "binding": OneLogin_Saml2_Constants.BINDING_HTTP_POST},
                "singleLogoutService": {"url": self.public_url + SLS_PATH,
                                        "binding": OneLogin_Saml2_Constants.BINDING_HTTP_REDIRECT},
                "NameIDFormat": saml.name_id_format,
                "x509cert": cert,
                "privateKey": key,
            },
            "idp": idp,
            "security": {
                "authnRequestsSigned": signing,
                "logoutRequestSigned": signing,
                "logoutResponseSigned": signing,
                "signMetadata": False,
                "wantAssertionsSigned": True,
                "wantMessagesSigned": saml.want_messages_signed,
                "wantAssertionsEncrypted": False,
                "wantNameId": False,
                "wantNameIdEncrypted": False,
                "wantAttributeStatement": True,
                "requestedAuthnContext": False,
                "rejectDeprecatedAlgorithm": True,
                "signatureAlgorithm": SIGNATURE_ALGORITHMS[saml.signature_algorithm],
                "digestAlgorithm": DIGEST_ALGORITHMS[saml.digest_algorithm],
            },
        }

    def request_data(self, path: str, query: Mapping[str, str] | None = None, form: Mapping[str, str] | None = None,
                     query_string: str = "") -> dict[str, Any]:
        """python3-saml's view of a request, built from `portal.public_url` rather than from the
        Host header, so the checks of Destination and Recipient hold behind a proxy."""
        return {
            "https": self._https,
            "http_host": self._host,
            "script_name": self._base_path + path,
            "get_data": dict(query or {}),
            "post_data": dict(form or {}),
            "query_string": query_string,
            "validate_signature_from_qs": bool(query_string),
        }

    @property
    def logout_origin(self) -> str:
        """The origin of the IdP's single logout service ('' if none): the logout form's POST is
        redirected there, so pages must allow it as a form action."""
        url = self.settings.get_idp_data().get("singleLogoutService", {}).get("url") or ""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""

    def _auth(self, data: dict[str, Any]) -> OneLogin_Saml2_Auth:
        return OneLogin_Saml2_Auth(data, self.settings)

    def metadata(self) -> str:
        """The SP metadata document the IdP is given."""
        xml = self.settings.get_sp_metadata()
        errors = self.settings.validate_metadata(xml)
        if errors:
            raise SamlError(f"generated SP metadata is invalid: {', '.join(errors)}")
        return xml.decode() if isinstance(xml, bytes) else xml

    def login_redirect(self) -> tuple[str, str]:
        """(IdP URL with our signed-if-configured AuthnRequest, the request's ID)."""
        auth = self._auth(self.request_data("/saml/login"))
        url = auth.login(return_to=self.public_url + "/portal")
        return url, auth.get_last_request_id()

    def process_response(self, form: Mapping[str, str], request_id: str | None) -> Assertion:
        """Validate a POSTed SAMLResponse; raise SamlError with the reason if it is refused."""
        if not form.get("SAMLResponse"):
            raise SamlError("no SAMLResponse in the POST")
        if request_id is None and not self.config.allow_unsolicited:
            raise SamlError("unsolicited response (no login started from this browser) and saml.allow_unsolicited "
                            "is false")
        auth = self._auth(self.request_data(ACS_PATH, form=form))
        try:
            auth.process_response(request_id=request_id)
        except Exception as exc:  # python3-saml raises whatever base64, zlib or lxml raised on bad input
            raise SamlError(f"unreadable response ({type(exc).__name__})") from None
        if auth.get_errors() or not auth.is_authenticated():
            raise SamlError(f"invalid response: {auth.get_last_error_reason() or ', '.join(auth.get_errors())}")
        in_response_to = auth.get_last_response_in_response_to()
        if request_id is not None and not hmac.compare_digest(in_response_to or "", request_id):
            raise SamlError("the response does not answer the login this browser started (InResponseTo)")
        root = OneLogin_Saml2_XML.to_etree(auth.get_last_response_xml())
        destination = root.get("Destination")
        if destination is not None and destination != self.acs_url:
            raise SamlError(f"the response is addressed to {destination!r}, not to {self.acs_url!r}")
        self._check_profile(root)
        assertion_id = auth.get_last_assertion_id()
        if not assertion_id:
            raise SamlError("the assertion has no ID")
        expires = auth.get_last_assertion_not_on_or_after() or time.time() + FALLBACK_ASSERTION_LIFETIME
        return Assertion(
            identity=map_identity(auth.get_attributes(), auth.get_nameid() or "", self.config),
            assertion_id=assertion_id,
            expires=float(expires),
            name_id=auth.get_nameid() or "",
            name_id_format=auth.get_nameid_format() or "",
            session_index=auth.get_session_index() or "",
        )

    def _check_profile(self, root: Any) -> None:
        """What python3-saml leaves loose: the audience must be present and ours, and every bearer
        confirmation's Recipient present and exactly our ACS URL."""
        assertions = root.xpath("/samlp:Response/saml:Assertion", namespaces=NS)
        if len(assertions) != 1:
            raise SamlError("the response does not hold exactly one plain assertion")
        restrictions = assertions[0].xpath("saml:Conditions/saml:AudienceRestriction", namespaces=NS)
        if not restrictions:
            raise SamlError("the assertion has no AudienceRestriction (it must name this service provider)")
        for restriction in restrictions:
            audiences = [(a.text or "").strip() for a in restriction.xpath("saml:Audience", namespaces=NS)]
            if self.entity_id not in audiences:
                raise SamlError(f"the assertion is meant for {audiences!r}, not for {self.entity_id!r}")
        confirmations = assertions[0].xpath(
            "saml:Subject/saml:SubjectConfirmation[@Method=$bearer]/saml:SubjectConfirmationData", namespaces=NS,
            bearer=BEARER)
        if not confirmations:
            raise SamlError("the assertion has no bearer SubjectConfirmationData")
        for data in confirmations:
            recipient = data.get("Recipient")
            if recipient is None or not hmac.compare_digest(recipient.encode(), self.acs_url.encode()):
                raise SamlError(f"the assertion's Recipient is {recipient!r}, not {self.acs_url!r}")

    def logout_redirect(self, saml_session: Mapping[str, str]) -> tuple[str, str] | None:
        """(IdP URL with a LogoutRequest, its ID) for single logout, or None if the IdP has no SLO."""
        if not self.settings.get_idp_data().get("singleLogoutService", {}).get("url") or not saml_session.get("nid"):
            return None
        auth = self._auth(self.request_data("/saml/logout"))
        url = auth.logout(return_to=self.public_url + "/portal/logged-out", name_id=saml_session["nid"],
                          session_index=saml_session.get("sidx") or None,
                          name_id_format=saml_session.get("nidf") or None)
        return url, auth.get_last_request_id()

    def process_logout(self, query: Mapping[str, str], query_string: str, request_id: str | None) -> str | None:
        """Handle an IdP's LogoutResponse (to our request) or LogoutRequest at /saml/sls.

        Returns the URL to send the browser to for a LogoutRequest (our LogoutResponse), None for
        a valid LogoutResponse; raises SamlError if the message is refused.
        """
        auth = self._auth(self.request_data(SLS_PATH, query=query, query_string=query_string))
        if "SAMLResponse" in query and request_id is None:
            raise SamlError("a logout response without a logout started from this browser")
        if "SAMLRequest" in query and self.config.want_logout_requests_signed and "Signature" not in query:
            raise SamlError("an unsigned logout request (saml.want_logout_requests_signed is true)")
        try:
            url = auth.process_slo(keep_local_session=True, request_id=request_id)
        except Exception as exc:  # as above: bad base64, deflate or XML
            raise SamlError(f"unreadable logout message ({type(exc).__name__})") from None
        if auth.get_errors():
            raise SamlError(f"invalid logout message: {auth.get_last_error_reason() or ', '.join(auth.get_errors())}")
        return url
