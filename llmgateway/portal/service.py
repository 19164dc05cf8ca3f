"""The self-service portal's core: sessions of people, terms of use, their keys and their usage.

Handlers pass in what a person sent and get back plain dicts for JSON, or a `GatewayError`
(status, message, code) to show. Store calls run in the gateway's store pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..audit import Actor
from ..auth.key_service import KeyService, key_view, visible_models
from ..auth.saml import ASSERTION_NAMESPACE, Assertion, ServiceProvider
from ..auth.sessions import LOGOUT_NAMESPACE, Sessions, load_secret
from ..config import ConfigError, PortalConfig
from ..errors import GatewayError, bad_request
from ..fields import known_models
from ..gateway import Gateway
from ..records import UserRecord
from .bodies import NewKey, Terms

DEFAULT_NEXT = "/portal"
USAGE_DAYS = 30
MAX_USAGE_DAYS = 90
DEFAULT_TERMS = """By creating and using API keys you agree that:

1. A key is personal. Do not share it; revoke it at once if it may have leaked.
2. Requests and their token counts are recorded per key for accounting and fair use.
3. Do not send data you are not allowed to process on this service.
4. Access can be limited or withdrawn if these terms are broken."""


def safe_next(value: str | None) -> str:
    """`value` if it is a path on this site, else the portal's start page (no open redirect).

    Refused: absolute URLs, scheme-relative ones (//evil.host), backslashes (browsers read /\\evil
    as //evil), whitespace and control characters (browsers drop some of them, which can turn
    "/<tab>/evil" into "//evil") and anything not starting with a single slash.
    """
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return DEFAULT_NEXT
    if "\\" in value or any(c.isspace() or not c.isprintable() for c in value):
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return DEFAULT_NEXT
    return value


@dataclass
class Session:
    """A logged-in person: the stored user and the claims of their session token."""

    user: UserRecord
    claims: dict[str, Any]


def _forbidden(message: str, code: str) -> GatewayError:
    return GatewayError(403, message, "permission_error", code)


class Portal:
    """One gateway's portal: login (SAML or development), terms, keys and usage for a person."""

    def __init__(self, gateway: Gateway, config: PortalConfig, sessions: Sessions, sp: ServiceProvider | None,
                 terms: str) -> None:
        self.gateway = gateway
        self.config = config
        self.sessions = sessions
        self.sp = sp
        self.terms = terms
        self.keys = KeyService(gateway)

    @classmethod
    def build(cls, gateway: Gateway) -> Portal:
        """Read the secret, terms and IdP metadata (blocking: call it through `in_thread`)."""
        config = gateway.config.portal
        if config is None:
            raise ConfigError("portal.enabled is false")
        terms = DEFAULT_TERMS
        if config.terms_file:
            try:
                terms = Path(config.terms_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"portal.terms_file: cannot read: {exc.strerror}") from None
        sessions = Sessions(load_secret(config), config.session_hours * 3600, config.public_url)
        sp = None if config.dev_login else ServiceProvider(config)
        return cls(gateway, config, sessions, sp, terms)

    # --- sessions -------------------------------------------------------------------------

    async def session(self, token: str | None) -> Session | None:
        """The person behind a session cookie, or None (bad, expired or logged-out token, unknown user)."""
        if not token:
            return None
        claims = self.sessions.verify(token)
        if claims is None:
            return None
        store = self.gateway.store
        if await self.gateway.in_thread(store.is_claimed, LOGOUT_NAMESPACE, claims["jti"]):
            return None
        user = await self.gateway.in_thread(store.get_user, claims["sub"])
        return Session(user, claims) if user is not None and not user.disabled else None

    async def claim_assertion(self, assertion: Assertion) -> bool:
        """Accept each assertion ID once, across every replica sharing the store."""
        return await self.gateway.in_thread(self.gateway.store.claim_once, ASSERTION_NAMESPACE,
                                            assertion.assertion_id, assertion.expires)

    async def log_in(self, username: str, display_name: str, email: str, is_admin: bool,
                     saml: dict[str, str] | None = None) -> tuple[str, dict]:
        """Record the person (created or refreshed) and issue their session token; a 403 for a
        person an admin disabled."""
        now = time.time()
        record = UserRecord(username=username, display_name=display_name, email=email, is_admin=is_admin,
                            created=now, last_login=now)
        stored = await self.gateway.in_thread(self.gateway.store.upsert_user, record)
        if stored.disabled:
            raise _forbidden("Your account on this service has been disabled by its administrators.",
                             "user_disabled")
        return self.sessions.issue(username, saml, now)

    async def log_out(self, claims: dict[str, Any]) -> None:
        """Refuse this session token from now on, on every replica, until it would have expired."""
        await self.gateway.in_thread(self.gateway.store.claim_once, LOGOUT_NAMESPACE, claims["jti"],
                                     float(claims["exp"]))

    # --- terms and profile ----------------------------------------------------------------

    def models_for(self, user: UserRecord) -> list[str]:
        """The models a person may choose for a key: every active routed model (see `visible_models`)."""
        return visible_models(self.gateway)

    def profile(self, user: UserRecord) -> dict[str, Any]:
        return {
            "username": user.username,
            "display_name": user.display_name,
            "email": user.email,
            "is_admin": user.is_admin,
            "terms": {"version": self.config.terms_version, "text": self.terms,
                      "accepted": user.agreement_version == self.config.terms_version,
                      "accepted_version": user.agreement_version},
            "models": self.models_for(user),
            "key_limit": self.config.max_keys_per_user,
            "dev_login": self.config.dev_login,
            "title": self.config.title,
            "currency": self.config.currency,
        }

    async def accept_terms(self, user: UserRecord, body: Any, actor: Actor) -> dict[str, Any]:
        version = Terms.parse(body).version
        if version != self.config.terms_version:
            raise GatewayError(409, "These terms have changed since the page was loaded; reload and read them again.",
                               "invalid_request_error", "terms_changed", "version")
        await self.gateway.in_thread(self.gateway.store.set_agreement, user.username, version)
        await self.gateway.audit(actor, "terms.accept", user.username, {"version": version})
        return {"accepted": True, "version": version}

    def _require_terms(self, user: UserRecord) -> None:
        if user.agreement_version != self.config.terms_version:
            raise _forbidden("Accept the current terms of use first.", "terms_not_accepted")

    # --- keys -----------------------------------------------------------------------------

    async def list_keys(self, user: UserRecord) -> dict[str, Any]:
        records = await self.gateway.in_thread(self.gateway.store.list_keys, user.username)
        now = time.time()
        keys = [key_view(r, now, detail=False) for r in sorted(records, key=lambda r: r.created, reverse=True)]
        return {"keys": keys, "limit": self.config.max_keys_per_user,
                "active": sum(1 for k in keys if k["status"] == "active")}

    def _parse_new_key(self, user: UserRecord, body: Any) -> tuple[str, list[str], float | None]:
        new = NewKey.parse(body)
        return new.name, known_models(new.models, self.models_for(user)), new.expires_days

    async def create_key(self, user: UserRecord, body: Any, actor: Actor) -> dict[str, Any]:
        """Make a key for `user`: shown once in the answer, only its hash stored; never more than
        `portal.max_keys_per_user` usable keys at once (the key service's cap)."""
        self._require_terms(user)
        name, models, expires_days = self._parse_new_key(user, body)
        key, record = await self.keys.create(actor, user.username, name, models, expires_days,
                                             cap=self.config.max_keys_per_user)
        return {"key": key, "record": key_view(record, time.time(), detail=False)}

    async def revoke_key(self, user: UserRecord, key_id: str, actor: Actor) -> dict[str, Any]:
        record = await self.keys.revoke(actor, key_id, owner=user.username)
        return {"record": key_view(record, time.time(), detail=False)}

    # --- usage ----------------------------------------------------------------------------

    async def usage(self, user: UserRecord, days_arg: str | None = None, now: float | None = None) -> dict[str, Any]:
        """Tokens and cost per UTC day and model over the last `days` days, zero days included."""
        try:
            days = int(days_arg) if days_arg is not None else USAGE_DAYS
        except ValueError:
            raise bad_request(f"days must be a whole number from 1 to {MAX_USAGE_DAYS}.", "days") from None
        if not 1 <= days <= MAX_USAGE_DAYS:
            raise bad_request(f"days must be a whole number from 1 to {MAX_USAGE_DAYS}.", "days")
        today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
        first = today - timedelta(days=days - 1)
        since = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
        rows = await self.gateway.in_thread(self.gateway.store.usage_by_day, since, None, user.username)
        fields = ("requests", "prompt_tokens", "completion_tokens", "cost")
        totals: dict[str, float] = dict.fromkeys(fields, 0)
        by_model: dict[str, dict[str, float]] = {}
        for row in rows:
            sums = by_model.setdefault(row["model"], dict.fromkeys(fields, 0))
            for f in fields:
                sums[f] += row[f]
                totals[f] += row[f]
        return {
            "days": [(first + timedelta(days=i)).isoformat() for i in range(days)],
            "rows": [{f: row[f] for f in ("day", "model", *fields)} for row in rows],
            "by_model": [{"model": m, **s} for m, s in sorted(by_model.items())],
            "totals": totals,
            "quota": await self.gateway.quota(user.username, user.limits),
        }
