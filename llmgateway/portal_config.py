"""The `[portal]` and `[saml]` sections: self-service login and the key portal.

Kept apart from config.py so that the login settings grow here without touching the core
sections. The portal is off unless `portal.enabled = true`; then it logs people in through the
SAML identity provider, or, on a laptop, through the development login (loopback only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .config import ConfigError, ServerConfig, _bool, _check_url, _int, _number, _reject_unknown, _str, _table

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
SIGNATURE_ALGORITHMS = {
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "rsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "rsa-sha512": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
}
DIGEST_ALGORITHMS = {
    "sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
    "sha384": "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "sha512": "http://www.w3.org/2001/04/xmlenc#sha512",
}
EPPN = "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"
AFFILIATION = "urn:oid:1.3.6.1.4.1.5923.1.1.1.1"
DISPLAY_NAME = "urn:oid:2.16.840.1.113730.3.1.241"
MAIL = "urn:oid:0.9.2342.19200300.100.1.3"
IS_MEMBER_OF = "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"
UNSPECIFIED_NAME_ID = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"

SAML_KEYS = {
    "idp_metadata_file", "idp_metadata_url", "idp_entity_id", "metadata_timeout", "sp_entity_id",
    "sp_cert_file", "sp_key_file", "sp_key_env", "sign_requests", "want_messages_signed", "allow_unsolicited",
    "want_logout_requests_signed",
    "signature_algorithm", "digest_algorithm", "name_id_format", "username_attribute", "display_name_attribute",
    "email_attribute", "eligible_attribute", "eligible_values", "ineligible_message", "admin_attribute",
    "admin_values",
}
PORTAL_KEYS = {
    "enabled", "public_url", "session_secret_env", "session_secret_file", "session_hours", "secure_cookies",
    "dev_login", "terms_version", "terms_file", "max_keys_per_user", "title", "currency",
}


@dataclass(frozen=True)
class SamlConfig:
    """How the gateway acts as a SAML service provider, and how it reads the person it gets."""

    idp_metadata_file: str = ""
    idp_metadata_url: str = ""
    idp_entity_id: str = ""
    metadata_timeout: float = 10.0
    sp_entity_id: str = ""
    sp_cert_file: str = ""
    sp_key_file: str = ""
    sp_key_env: str = ""
    sign_requests: bool = False
    want_messages_signed: bool = False
    want_logout_requests_signed: bool = True
    allow_unsolicited: bool = False
    signature_algorithm: str = "rsa-sha256"
    digest_algorithm: str = "sha256"
    name_id_format: str = UNSPECIFIED_NAME_ID
    username_attribute: str = EPPN
    display_name_attribute: str = DISPLAY_NAME
    email_attribute: str = MAIL
    eligible_attribute: str = AFFILIATION
    eligible_values: tuple[str, ...] = ("employee", "faculty")
    ineligible_message: str = ""
    admin_attribute: str = IS_MEMBER_OF
    admin_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortalConfig:
    """The self-service portal; present in `Config.portal` only when enabled."""

    public_url: str
    session_secret_env: str = "LLMGW_SESSION_SECRET"
    session_secret_file: str = ""
    session_hours: float = 8.0
    secure_cookies: bool = True
    dev_login: bool = False
    terms_version: str = "1"
    terms_file: str = ""
    max_keys_per_user: int = 10
    title: str = "LLM Gateway"
    currency: str = ""
    saml: SamlConfig = field(default_factory=SamlConfig)

    @property
    def base_path(self) -> str:
        """The path prefix of `public_url` ('' when the gateway sits at the root)."""
        return urlsplit(self.public_url).path.rstrip("/")


def parse_portal(raw: Mapping[str, Any], server: ServerConfig) -> PortalConfig | None:
    """Validate `[portal]` and `[saml]`; None when the portal is not enabled."""
    portal_raw = _table(raw, "portal")
    saml_raw = _table(raw, "saml")
    _reject_unknown(portal_raw, "portal", PORTAL_KEYS)
    _reject_unknown(saml_raw, "saml", SAML_KEYS)
    saml = _parse_saml(saml_raw)
    if not _bool(portal_raw, "portal.enabled", False):
        return None
    dev_login = _bool(portal_raw, "portal.dev_login", False)
    public_url = _str(portal_raw, "portal.public_url", "").rstrip("/")
    if not public_url and not dev_login:
        raise ConfigError("portal.public_url must be set: the https address people and the IdP reach the gateway at")
    public_url = public_url or f"http://{_url_host(server.host)}:{server.port}"
    _check_url(public_url, "portal.public_url")
    if dev_login and server.host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"portal.dev_login: the development login lets anyone in, so it is only allowed while "
            f"server.listen is a loopback address (127.0.0.1, ::1 or localhost), not {server.host!r}"
        )
    if not dev_login and not (saml.idp_metadata_file or saml.idp_metadata_url):
        raise ConfigError("saml.idp_metadata_file or saml.idp_metadata_url must be set when the portal is "
                          "enabled (or set portal.dev_login = true on a laptop)")
    version = _str(portal_raw, "portal.terms_version", "1").strip()
    if not version:
        raise ConfigError("portal.terms_version must not be empty")
    hours = _number(portal_raw, "portal.session_hours", 8.0)
    if hours <= 0:
        raise ConfigError("portal.session_hours must be more than 0")
    return PortalConfig(
        public_url=public_url,
        session_secret_env=_str(portal_raw, "portal.session_secret_env", "LLMGW_SESSION_SECRET"),
        session_secret_file=_str(portal_raw, "portal.session_secret_file", ""),
        session_hours=hours,
        secure_cookies=_bool(portal_raw, "portal.secure_cookies", public_url.startswith("https:")),
        dev_login=dev_login,
        terms_version=version,
        terms_file=_str(portal_raw, "portal.terms_file", ""),
        max_keys_per_user=_int(portal_raw, "portal.max_keys_per_user", 10, minimum=1),
        title=_str(portal_raw, "portal.title", "LLM Gateway"),
        currency=_currency(portal_raw),
        saml=saml,
    )


def _currency(raw: Mapping[str, Any]) -> str:
    """What the pages write after a cost: the unit of the models' prices (e.g. EUR), or nothing."""
    currency = _str(raw, "portal.currency", "").strip()
    if len(currency) > 12:
        raise ConfigError("portal.currency must be a short unit such as EUR, USD or credits (at most 12 characters)")
    return currency


def _parse_saml(raw: Mapping[str, Any]) -> SamlConfig:
    metadata_url = _str(raw, "saml.idp_metadata_url", "")
    if metadata_url:
        _check_url(metadata_url, "saml.idp_metadata_url")
    if metadata_url and _str(raw, "saml.idp_metadata_file", ""):
        raise ConfigError("saml.idp_metadata_file and saml.idp_metadata_url: set only one")
    for name, choices in (("signature_algorithm", SIGNATURE_ALGORITHMS), ("digest_algorithm", DIGEST_ALGORITHMS)):
        value = raw.get(name)
        if value is not None and value not in choices:
            raise ConfigError(f"saml.{name}: {value!r} is not one of {', '.join(choices)}")
    key_file = _str(raw, "saml.sp_key_file", "")
    key_env = _str(raw, "saml.sp_key_env", "")
    cert_file = _str(raw, "saml.sp_cert_file", "")
    if key_file and key_env:
        raise ConfigError("saml.sp_key_file and saml.sp_key_env: set only one")
    if bool(key_file or key_env) != bool(cert_file):
        raise ConfigError("saml.sp_cert_file and saml.sp_key_file (or sp_key_env) go together: set both or neither")
    sign_requests = _bool(raw, "saml.sign_requests", False)
    if sign_requests and not cert_file:
        raise ConfigError("saml.sign_requests needs saml.sp_cert_file and saml.sp_key_file (or sp_key_env)")
    sp_entity_id = _str(raw, "saml.sp_entity_id", "")
    username_attribute = _str(raw, "saml.username_attribute", EPPN)
    if not username_attribute.strip():
        raise ConfigError("saml.username_attribute must not be empty")
    return SamlConfig(
        idp_metadata_file=_str(raw, "saml.idp_metadata_file", ""),
        idp_metadata_url=metadata_url,
        idp_entity_id=_str(raw, "saml.idp_entity_id", ""),
        metadata_timeout=_number(raw, "saml.metadata_timeout", 10.0),
        sp_entity_id=sp_entity_id,
        sp_cert_file=cert_file,
        sp_key_file=key_file,
        sp_key_env=key_env,
        sign_requests=sign_requests,
        want_messages_signed=_bool(raw, "saml.want_messages_signed", False),
        want_logout_requests_signed=_bool(raw, "saml.want_logout_requests_signed", True),
        allow_unsolicited=_bool(raw, "saml.allow_unsolicited", False),
        signature_algorithm=raw.get("signature_algorithm", "rsa-sha256"),
        digest_algorithm=raw.get("digest_algorithm", "sha256"),
        name_id_format=_str(raw, "saml.name_id_format", UNSPECIFIED_NAME_ID),
        username_attribute=username_attribute,
        display_name_attribute=_str(raw, "saml.display_name_attribute", DISPLAY_NAME),
        email_attribute=_str(raw, "saml.email_attribute", MAIL),
        eligible_attribute=_str(raw, "saml.eligible_attribute", AFFILIATION),
        eligible_values=_str_list(raw, "saml.eligible_values", ("employee", "faculty")),
        ineligible_message=_str(raw, "saml.ineligible_message", ""),
        admin_attribute=_str(raw, "saml.admin_attribute", IS_MEMBER_OF),
        admin_values=_str_list(raw, "saml.admin_values", ()),
    )


def _str_list(table: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(name.rsplit(".", 1)[-1], list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name}: {value!r} must be a list of non-empty strings")
    return tuple(value)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
