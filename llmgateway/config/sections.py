"""Every setting, declared once: its type, default, bounds and help.

One frozen pydantic dataclass per TOML section (`SECTIONS`, in the order the file is checked).
The validation, its messages (`load`), the example file and the README's tables (`docs`) all
follow from these declarations. Attribute reads cost what a stdlib dataclass's do: the `/v1`
path reads them on every call.

A field is a setting when it has help (`setting(...)`); other fields (`PortalConfig.saml`,
`Config`'s sections) only hold the parts together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from .types import (
    Allowed,
    Bool,
    HostList,
    HttpUrl,
    Interval,
    Listen,
    LooseHttpUrl,
    MetadataUrl,
    Number,
    OptionalListen,
    SecretHosts,
    Text,
    as_bool,
    as_number,
    as_text,
    check_url,
    checked,
    limit_table,
    number_where,
    one_of,
    parse_listen,
    refusal,
    text_list,
    text_where,
    whole_number,
)

MODEL_KINDS = ("chat", "completion", "embedding")
LIMIT_NAMES = (
    "requests_per_minute", "tokens_per_minute", "concurrent_requests",
    "cost_per_day", "cost_per_week", "tokens_per_day", "tokens_per_week",
)
MODEL_LIMIT_NAMES = LIMIT_NAMES[:3]
MIN_LEASE_SECONDS = 3.0
MIN_PROGRESS_SECONDS = 0.1
MIN_HEALTH_CHECK_SECONDS = 0.1
LOG_FORMATS = ("text", "json")
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

def section(cls: type) -> type:
    """A frozen pydantic dataclass that refuses unknown keys.

    Pydantic leaves a `FieldInfo` as the class attribute of a field without a plain default (a
    required one, or one with a factory); CPython then reads that attribute on instances 3-4 times
    slower than a stdlib dataclass's, so those class attributes go (the schema keeps them)."""
    cls = dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
    for name in cls.__pydantic_fields__:
        if isinstance(cls.__dict__.get(name), FieldInfo):
            delattr(cls, name)
    return cls


def setting(default: Any = None, help: str = "", *, factory: Any = None, env: tuple[str, ...] = (),
            example: Any = None, shown: Any = None, default_text: str = "") -> Any:
    """A setting's default and help. `env`: variables that override it; `example`: a value the
    example file shows commented out; `shown`: a value it shows instead of the default;
    `default_text`: the README's default when the default is derived from other settings."""
    extra = {"env": env, "example": example, "shown": shown, "default_text": default_text}
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra)


def settings_of(cls: type) -> dict[str, FieldInfo]:
    """A section's settings (name -> pydantic's FieldInfo), in declaration order."""
    return {name: info for name, info in cls.__pydantic_fields__.items() if info.description}


@section
class ServerConfig:
    """The public listener: its address, and what it accepts from a client."""

    listen: Listen = setting("127.0.0.1:8000", "address to listen on, `host:port` (`[::1]:8000` for IPv6)",
                             env=("LLMGW_LISTEN",))
    max_body_bytes: whole_number(1024) = setting(
        10 * 1024 * 1024, "largest request body on /v1, in bytes; larger bodies get 413 (the portal and the admin "
        "API take 64 KiB, SAML responses 512 KiB)")
    body_timeout_seconds: number_where(lambda v: v > 0, "must be > 0", "number > 0", bare=True) = setting(
        60.0, "a request body must arrive whole within this many seconds, or the connection is cut")
    max_headers: whole_number(10) = setting(100, "requests with more header fields get 431")
    max_header_bytes: whole_number(4096, at_most=128 * 1024) = setting(
        32 * 1024, "requests with more header bytes get 431")
    drain_seconds: Number = setting(
        30.0, "on SIGTERM: new requests get 503 (Connection: close; queued connections are answered, not reset), "
        "open streams get this many seconds to finish, then the rest are cut (what they produced is still "
        "metered), the listener closes and usage is flushed")
    access_log: Bool = setting(True, "one line per request: method, path without query, status, time, request id")
    log_format: one_of(LOG_FORMATS, "{value!r} must be 'text' or 'json'") = setting(
        "text", "`text` (one readable line per record) or `json` (one JSON object per line: time, level, logger, "
        "message, request_id; access lines add method, path, status, duration_ms, model, user_id, key_id)")

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


@section
class UpstreamConfig:
    """How the gateway calls the model servers."""

    max_clients: whole_number(1) = setting(1000, "most concurrent upstream transfers (pycurl handles) per process")
    connect_timeout: Number = setting(
        5.0, "seconds to wait for a TCP connection to an upstream (then fail over to the next)")
    request_timeout: Number = setting(600.0, "longest a whole upstream request may take, in seconds")
    idle_timeout: Number = setting(
        120.0, "cut a stream whose upstream sends nothing for this many seconds, before or after its first byte "
        "(0 = never); non-streaming calls are bounded by request_timeout")
    default_url: LooseHttpUrl = setting(
        "", "the seed deployment's layout: a model with no `upstreams` is served from `<default_url>/<model id>`, "
        "e.g. http://llm.svc/llama-3-8b/v1/chat/completions; a trailing / is dropped",
        env=("LLM_DEFAULT_URL", "LLMGW_DEFAULT_URL"))
    default_api_key_env: Text = setting(
        "", "environment variable holding the upstream secret for configured models that name none (never for "
        "models added through the admin API: they name their secret, or have none)")


def _store_url(url: str) -> bool:
    scheme, _, rest = url.partition("://")
    sqlite_ok = scheme == "sqlite" and len(rest.partition("?")[0]) > 1 and rest.startswith("/")
    return sqlite_ok or (scheme in ("mongodb", "mongodb+srv") and bool(rest))


def _check_store_url(value: Any) -> str:
    url = as_text(value)
    if not _store_url(url):
        scheme = url.partition("://")[0]
        shown = url if scheme == "sqlite" else f"{scheme}://..."  # any other URL may carry a password
        raise refusal(f"{shown!r} is not supported (use sqlite:///path/to/file.db or mongodb://host:port/database)")
    return url


@section
class StoreConfig:
    """Where keys, users and usage are kept."""

    url: checked(str, _check_store_url, "`sqlite:///path` or `mongodb://...`") = setting(
        "sqlite:///llmgateway.db",
        "where keys and usage live: `sqlite:///relative.db` or `sqlite:////absolute.db` (one file, WAL mode; "
        "`?timeout=SECONDS` sets how long a call waits on a locked database, default 10), or MongoDB: "
        "`mongodb://[user:password@]host[:port][,host...]/[database][?options]` or `mongodb+srv://...` (database "
        "`llmgateway` when none is named; `serverSelectionTimeoutMS` 5000 unless set). A URL with a password "
        "belongs in LLMGW_STORE_URL, not the file", env=("LLMGW_STORE_URL",))


@section
class KeysConfig:
    """The in-process cache of API keys."""

    cache_ttl_seconds: Number = setting(
        10.0, "seconds a key lookup is cached in-process; without Redis, a key revoked with the CLI is refused by "
        "a running gateway within this time (with Redis: at once)")
    negative_ttl_seconds: Number = setting(
        5.0, "seconds an unknown key is remembered as unknown (spares the store from key guessing)")
    cache_max_entries: whole_number(1) = setting(
        100_000, "most keys kept in the in-process cache (least recently used go first)")
    negative_max_entries: whole_number(1) = setting(
        100_000, "most unknown keys remembered: a flood of made-up keys costs one store query per distinct key and "
        "no memory beyond this")


@section
class UsageConfig:
    """How usage events reach the store, and what survives a crash."""

    flush_interval_seconds: Number = setting(
        2.0, "how often buffered usage events are written to the store, in seconds")
    spool_dir: Text = setting(
        "./usage-spool", "where events go when the store cannot take them; replayed automatically. Give each "
        "replica its own folder (an emptyDir or a volume)", env=("LLMGW_SPOOL_DIR",))
    max_buffer_events: whole_number(1) = setting(
        200_000, "most events kept in memory while neither store nor spool can take them")
    flush_batch: whole_number(1) = setting(5_000, "events written per store transaction")
    journal_dir: Text = setting(
        "", "the usage journal: every call writes a line when it opens and one when its event is recorded, so a "
        "killed process (SIGKILL, an OOM kill) loses no call; the next start replays it. Put it where a restarted "
        "container finds it again (in Kubernetes: a volume). \"\" = `journal` inside spool_dir",
        default_text="`<spool_dir>/journal`")
    journal_progress_seconds: number_where(
        lambda v: v >= MIN_PROGRESS_SECONDS, f"{{value!r}} must be >= {MIN_PROGRESS_SECONDS:g}",
        f"number >= {MIN_PROGRESS_SECONDS:g}") = setting(
        1.0, "how often open streams record what they have produced so far (what a crash leaves of them)")

    def __post_init__(self) -> None:
        if not self.journal_dir:
            object.__setattr__(self, "journal_dir", str(Path(self.spool_dir) / "journal"))


@section
class LimitsConfig:
    """Default limits and how calls reserve against them (see \"Limits and quotas\" in the README)."""

    key: limit_table(LIMIT_NAMES) = setting(
        help="defaults for every key; override per key with `llmgateway limits set --key ...`. 0 or absent = no "
        "limit. Windows: the last 60 s; budgets: the UTC day / week (from Monday). Names: see \"Limits and quotas\"",
        factory=dict, example={"requests_per_minute": 60, "tokens_per_minute": 100000, "concurrent_requests": 8})
    user: limit_table(LIMIT_NAMES) = setting(
        help="defaults for every user, across all their keys; override with `llmgateway limits set --user ...`. "
        "Cost budgets use the models' prices; token budgets count only free models (both prices 0)",
        factory=dict, example={"cost_per_day": 5.0, "cost_per_week": 20.0, "tokens_per_day": 2000000,
                               "tokens_per_week": 10000000})
    prompt_bytes_per_token: number_where(lambda v: v >= 1, "{value!r} must be >= 1", "number >= 1") = setting(
        1.0, "reservation before a call is admitted: prompt bytes per token (1 = never short of the real count; "
        "larger reserves less)")
    default_max_tokens: whole_number(1) = setting(
        1024, "completion tokens reserved when a call sets no max_tokens")
    concurrency_lease_seconds: number_where(
        lambda v: v >= MIN_LEASE_SECONDS,
        f"{{value!r}} must be >= {MIN_LEASE_SECONDS:g} (open calls renew their slots every third of it)",
        f"number >= {MIN_LEASE_SECONDS:g}") = setting(
        30.0, "a concurrency slot lives this many seconds unless its replica renews it (every third of it, while "
        "the call is open): the slots of a replica that died free themselves within this time")


def _redis_url(url: str) -> bool:
    return not url or urlsplit(url).scheme in ("redis", "rediss", "unix")


@section
class RedisConfig:
    """Redis, for several replicas."""

    url: text_where(_redis_url, "must start with redis://, rediss:// or unix://", '`redis://`, `rediss://`, '
                    '`unix://`, or ""') = setting(
        "", "shared state for several replicas: key cache, revocations, limit counters. Empty = none (limits are "
        "kept in the process: right for a single replica)", env=("LLMGW_REDIS_URL",))
    on_failure: one_of(("local", "refuse"), "{value!r} must be 'local' or 'refuse'") = setting(
        "local", "while Redis is unreachable: `local` = rate and concurrency limits per replica, budgets held in "
        "the shared store (never overspent by more than one call per replica); `refuse` = calls that have limits "
        "get 503. Either way the replica reconnects by itself")
    timeout_seconds: number_where(lambda v: v > 0, "must be > 0", "number > 0", bare=True) = setting(
        0.5, "connect and command timeout, in seconds")
    key_cache_ttl_seconds: Number = setting(300.0, "lifetime of a key in the shared cache, in seconds")
    reconcile_interval_seconds: Interval = setting(
        30.0, "how often Redis is reconciled with the store: budgets after a Redis restart, and every shared "
        "key-cache entry that no longer matches the store; the bound within which any change of a key or a person "
        "reaches every replica, even if its announcement was lost. Below 1 counts as 1")


@section
class JobsConfig:
    """Background jobs: usage rollups and retention."""

    rollup_interval_seconds: Interval = setting(
        300.0, "hourly and daily usage rollups are rebuilt this often, in seconds (below 1 counts as 1)")
    retention_days: number_where(
        lambda v: v == 0 or v >= 31, "must be 0 (keep for ever) or >= 31: the portal shows 30 days",
        "0, or a number >= 31", bare=True) = setting(
        90.0, "raw usage events are deleted after this many days (0 = keep for ever; else at least 31: the portal "
        "shows 30 days)")
    retention_interval_seconds: Interval = setting(
        3600.0, "how often the retention job runs, in seconds (below 1 counts as 1)")


@section
class MetricsConfig:
    """The Prometheus listener: off unless `listen` is set, never the public port."""

    listen: OptionalListen = setting(
        "", "Prometheus metrics (GET /metrics) on a listener of their own, never the public port; \"\" = off. It "
        "asks for no key: bind it where only Prometheus reaches it (Kubernetes: \"0.0.0.0:9464\", the pod's "
        "\"metrics\" port, which the NetworkPolicy opens to Prometheus only)", env=("LLMGW_METRICS_LISTEN",),
        default_text='"" (off)')

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0] if self.listen else ""

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1] if self.listen else 0


@section
class AdminConfig:
    """The admin API (/admin/api/v1) and, with the portal enabled, the admin UI (/admin)."""

    bootstrap_token_env: Text = setting(
        "LLMGW_ADMIN_TOKEN", "environment variable holding the bootstrap admin token (at least 24 characters; "
        "unset = none). It can do one thing: POST /admin/api/v1/tokens {\"name\", \"owner\"} makes \"owner\" the "
        "first admin and returns a token of theirs; once anyone holds the admin role it is refused (401)")
    token_days: Number = setting(
        90.0, "lifetime of a new admin token when none is asked for, in days (more than 0, at most max_token_days)")
    max_token_days: Number = setting(365.0, "the longest lifetime of an admin token, in days")
    catalog_refresh_seconds: Interval = setting(
        5.0, "every replica re-reads the models added through the admin API this often, in seconds (below 1 counts "
        "as 1); with Redis a change reaches every replica at once anyway")
    model_secret_envs: text_list("{value!r} must be a list of environment variable names") = setting(
        (), "further environment variables that models added through the admin API may take their upstream secret "
        "from, besides those the configured models use (any other could be one of the gateway's own secrets). Each "
        "must be bound to hosts: by a configured model that uses it, or in secret_hosts")
    model_hosts: HostList = setting(
        None, "hosts that models added through the admin API may call: \"host\" (any port), \"host:port\", or "
        "\"*\" for any. Unset = the hosts of the configured models and of upstream.default_url. Link-local and "
        "cloud metadata addresses (169.254.0.0/16, fe80::/10, metadata.google.internal, 100.100.100.200, "
        "fd00:ec2::254, ...) are refused whatever this says", example=["vllm.llm.svc:8000", "api.openai.com"],
        default_text="the configured models' hosts")
    secret_hosts: SecretHosts = setting(
        help="per secret variable, further hosts it may be sent to, besides those of the configured models that "
        "use it (\"*\" not allowed). An API model naming a secret can only point at these hosts",
        factory=dict, example={"OPENAI_API_KEY": ["api.openai.com"]})

    @model_validator(mode="after")
    def _token_days_within_the_longest(self) -> AdminConfig:
        if not 0 < self.token_days <= self.max_token_days:
            raise refusal("admin.token_days must be more than 0 and at most admin.max_token_days", whole=True)
        return self


@section
class SamlConfig:
    """How the gateway acts as a SAML service provider, and how it reads the person it gets."""

    idp_metadata_file: Text = setting(
        "", "the identity provider's metadata, from a file (or idp_metadata_url; exactly one when the portal is "
        "enabled without dev_login)", example="/etc/llmgateway/idp-metadata.xml", default_text="one of the two "
        "required")
    idp_metadata_url: MetadataUrl = setting(
        "", "the identity provider's metadata, from a URL fetched once at start", example="https://idp.example.edu/"
        "idp/shibboleth", default_text="one of the two required")
    idp_entity_id: Text = setting(
        "", "which IdP of the metadata, if it describes several", example="https://idp.example.edu/idp/shibboleth",
        default_text="the first IdP")
    metadata_timeout: Number = setting(10.0, "seconds to wait for idp_metadata_url")
    sp_entity_id: Text = setting(
        "", "this gateway's entity ID (where its metadata is served)", example="https://llm.example.edu/saml/metadata",
        default_text="`<public_url>/saml/metadata`")
    sp_cert_file: Text = setting(
        "", "certificate of this SP (with a key, or neither), to sign AuthnRequests and logout messages and to "
        "publish in the metadata", example="/etc/llmgateway/sp.crt")
    sp_key_file: Text = setting("", "this SP's key, from a file", example="/run/secrets/sp.key")
    sp_key_env: Text = setting("", "this SP's key, from an environment variable (not with sp_key_file)",
                               example="LLMGW_SAML_SP_KEY")
    sign_requests: Bool = setting(
        False, "sign AuthnRequests and logout messages (needs the certificate and key above)")
    want_messages_signed: Bool = setting(
        False, "assertions must always be signed; also require the Response around them to be signed")
    want_logout_requests_signed: Bool = setting(
        True, "refuse logout requests from the IdP that are not signed (an unsigned one would let any page log a "
        "person out); turn off only for an IdP that cannot sign them")
    allow_unsolicited: Bool = setting(
        False, "accept IdP-initiated logins (responses to no request of ours); off: every response must answer the "
        "AuthnRequest this browser started (InResponseTo)")
    signature_algorithm: one_of(tuple(SIGNATURE_ALGORITHMS), f"{{value!r}} is not one of "
                                f"{', '.join(SIGNATURE_ALGORITHMS)}", text_first=False) = setting(
        "rsa-sha256", "the algorithm of what this SP signs (SHA-1 signatures from the IdP are refused)")
    digest_algorithm: one_of(tuple(DIGEST_ALGORITHMS), f"{{value!r}} is not one of {', '.join(DIGEST_ALGORITHMS)}",
                             text_first=False) = setting("sha256", "the digest of what this SP signs")
    name_id_format: Text = setting(UNSPECIFIED_NAME_ID, "the NameID format asked for")
    username_attribute: text_where(lambda v: bool(v.strip()), "must not be empty", "non-empty text",
                                   bare=True) = setting(
        EPPN, "the attribute (its Name as the IdP sends it, usually urn:oid:...) holding the username: "
        "eduPersonPrincipalName by default; \"NameID\" takes the subject's NameID instead")
    display_name_attribute: Text = setting(DISPLAY_NAME, "the attribute holding the name shown (displayName)")
    email_attribute: Text = setting(MAIL, "the attribute holding the e-mail address shown (mail)")
    eligible_attribute: Text = setting(
        AFFILIATION, "who may use the service: a person needs one of eligible_values in this attribute "
        "(eduPersonAffiliation by default)")
    eligible_values: text_list("{value!r} must be a list of non-empty strings") = setting(
        ("employee", "faculty"), "the values of eligible_attribute that admit a person; [] lets in everyone the IdP "
        "vouches for")
    ineligible_message: Text = setting(
        "", "what an ineligible person reads (default: which affiliations are admitted and what was sent)",
        example="This service is for staff. Students: see https://example.edu/llm", default_text="generated")
    admin_attribute: Text = setting(
        IS_MEMBER_OF, "who is an admin: a person with one of admin_values in this attribute (isMemberOf by default)")
    admin_values: text_list("{value!r} must be a list of non-empty strings") = setting(
        (), "the values of admin_attribute that make an admin; [] = nobody")

    @model_validator(mode="after")
    def _one_source_and_a_whole_key(self) -> SamlConfig:
        if self.idp_metadata_url and self.idp_metadata_file:
            raise refusal("saml.idp_metadata_file and saml.idp_metadata_url: set only one", whole=True)
        if self.sp_key_file and self.sp_key_env:
            raise refusal("saml.sp_key_file and saml.sp_key_env: set only one", whole=True)
        if bool(self.sp_key_file or self.sp_key_env) != bool(self.sp_cert_file):
            raise refusal("saml.sp_cert_file and saml.sp_key_file (or sp_key_env) go together: set both or neither",
                          whole=True)
        if self.sign_requests and not self.sp_cert_file:
            raise refusal("saml.sign_requests needs saml.sp_cert_file and saml.sp_key_file (or sp_key_env)",
                          whole=True)
        return self


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else as_bool(value)


@section
class PortalConfig:
    """The self-service portal and its login; off unless enabled (`Config.portal` is None then)."""

    enabled: Bool = setting(
        False, "the self-service portal (/portal): people log in, accept the terms of use, create and revoke their "
        "own keys and see their usage. Off unless enabled")
    public_url: HttpUrl = setting(
        "", "the address people and the IdP reach the gateway at (scheme, host, port and any path prefix of a proxy "
        "in front); SAML URLs and cookie paths are built from it, not from request headers. Required unless "
        "dev_login is on (then: http://<server.listen>)", env=("LLMGW_PUBLIC_URL",),
        example="https://llm.example.edu", default_text="required (dev login: `http://<server.listen>`)")
    session_secret_env: Text = setting(
        "LLMGW_SESSION_SECRET", "session cookies hold a JWT signed with this secret (at least 32 characters), read "
        "from the environment variable named here or from session_secret_file. Give every replica the same secret")
    session_secret_file: Text = setting(
        "", "a file holding the session secret", example="/run/secrets/llmgw-session-secret")
    session_hours: number_where(lambda v: v > 0, "must be more than 0", "number > 0", bare=True) = setting(
        8.0, "hours a login lasts")
    secure_cookies: checked(bool, _optional_bool, "true or false") = setting(
        None, "mark cookies Secure (sent over https only); default: true when public_url is https", example=True,
        default_text="true for an https `public_url`")
    dev_login: Bool = setting(
        False, "the development login: a form where anyone types any username, for trying the portal on a laptop "
        "without an IdP. Refused unless server.listen is a loopback address; every page then carries a red banner. "
        "Without a session secret it uses a random one (sessions end on restart)")
    terms_version: text_where(bool, "must not be empty", "non-empty text", bare=True, clean=str.strip) = setting(
        "1", "the terms of use: people see them until they accept this version; change it when the text changes "
        "and everyone is asked again")
    terms_file: Text = setting(
        "", "the terms as plain text (blank line = paragraph); without it a short built-in text is shown",
        example="/etc/llmgateway/terms.txt", default_text="built-in text")
    max_keys_per_user: whole_number(1) = setting(10, "most usable (active, unexpired) keys one person may have")
    title: Text = setting("LLM Gateway", "the name shown at the top of the portal's pages")
    currency: text_where(
        lambda v: len(v) <= 12, "must be a short unit such as EUR, USD or credits (at most 12 characters)",
        "text, at most 12 characters", bare=True, clean=str.strip) = setting(
        "", "the unit of the models' prices, written after every cost on the portal and admin pages (e.g. \"EUR\", "
        "\"USD\", \"credits\"); empty: costs are shown as plain numbers")
    saml: SamlConfig = Field(default_factory=SamlConfig)

    def __post_init__(self) -> None:
        if self.secure_cookies is None:
            object.__setattr__(self, "secure_cookies", self.public_url.startswith("https:"))

    @model_validator(mode="after")
    def _reachable_and_logged_in(self) -> PortalConfig:
        if not self.public_url and not self.dev_login:
            raise refusal("portal.public_url must be set: the https address people and the IdP reach the gateway at",
                          whole=True)
        if not self.dev_login and not (self.saml.idp_metadata_file or self.saml.idp_metadata_url):
            raise refusal("saml.idp_metadata_file or saml.idp_metadata_url must be set when the portal is "
                          "enabled (or set portal.dev_login = true on a laptop)", whole=True)
        return self

    @property
    def base_path(self) -> str:
        """The path prefix of `public_url` ('' when the gateway sits at the root)."""
        return urlsplit(self.public_url).path.rstrip("/")


@section
class Upstream:
    url: str
    weight: float = 1.0


def _health_path(path: str) -> bool:
    return path.startswith("/") and not any(c in path for c in "?# ") and all(ord(c) >= 0x21 for c in path)


def _upstream(value: Any) -> Upstream:
    """A URL string or {url = ..., weight = ...}; a built `Upstream` as it is."""
    if isinstance(value, Upstream):
        return value
    if isinstance(value, str):
        url, weight = value, 1.0
    elif isinstance(value, dict) and isinstance(value.get("url"), str):
        url, weight = value["url"], value.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise refusal("must be a positive number", bare=True, key="weight")
    else:
        raise refusal("must be a URL string or {url = ..., weight = ...}", bare=True)
    return Upstream(check_url(url.rstrip("/")), float(weight))


@section
class ModelConfig:
    """One [[models]] table per model that clients may call."""

    id: Text = setting(..., help="what clients send as `model`", shown="llama-3-8b", default_text="required")
    upstreams: Annotated[tuple[checked(Upstream, _upstream, "URL or `{url, weight}`"), ...],
                         Allowed("non-empty list of http(s) URLs or `{url, weight}` tables")] = setting(
        ..., help="base URLs of the upstream servers (the client's /v1/... path is appended), or {url, weight} tables, "
        "e.g. [{ url = \"http://gpu1:8000\", weight = 2 }, \"http://gpu2:8000\"]. Several upstreams share the load "
        "(least outstanding requests first) and a connect error before the first byte fails over to the next",
        shown=["http://127.0.0.1:8001"], default_text="`[\"<default_url>/<id>\"]`, else required")
    upstream_model: Text = setting(
        "", "the model name the upstream expects, if it differs from `id`",
        shown="meta-llama/Meta-Llama-3-8B-Instruct", default_text="`id`")
    kind: one_of(MODEL_KINDS, f"must be one of {', '.join(MODEL_KINDS)}", bare=True, text_first=False) = setting(
        "chat", "`chat`, `completion` or `embedding` (informational: all endpoints are relayed)")
    api_key_env: Text = setting(
        "", "environment variable holding the upstream's API key, sent as \"Authorization: Bearer ...\" to the "
        "upstream only; an unset variable is an error at start. Unset here: upstream.default_api_key_env",
        example="LLAMA_API_KEY", default_text="upstream.default_api_key_env")
    api_key_file: Text = setting(
        "", "a file holding the upstream's API key (instead of api_key_env)", example="/run/secrets/llama-api-key")
    prompt_cost_per_1k: Number = setting(0.0, "price per 1,000 prompt tokens, for the cost of each request")
    completion_cost_per_1k: Number = setting(0.0, "price per 1,000 completion tokens")
    active: Bool = setting(True, "`false` hides the model (404) without deleting it from the file")
    usage_probe: Bool = setting(
        True, "for chat streams from servers that send no usage and whose tokenizer cannot apply the chat template "
        "(llama-cpp-python): count the prompt exactly with a one-token non-streaming request of the same messages; "
        "false = an estimate instead (see \"How tokens are counted\")")
    limits: limit_table(MODEL_LIMIT_NAMES) = setting(
        help="rate limits for each user on this model, on top of the key and user limits; {} = none", factory=dict)
    health_check_path: text_where(
        _health_path, "{value!r} must be a path starting with '/' (no query, fragment or spaces)",
        "path starting with `/`") = setting(
        "/health", "active health check: GET <upstream><health_check_path>; any status below 500 passes. /health is "
        "vLLM's; llama-cpp-python's server answers it 404 without touching its model, which is what a check must do "
        "there (see \"Upstream pools and health\")")
    health_check_seconds: number_where(
        lambda v: v == 0 or v >= MIN_HEALTH_CHECK_SECONDS,
        f"{{value!r}} must be 0 (no active checks) or >= {MIN_HEALTH_CHECK_SECONDS:g}",
        f"0, or a number >= {MIN_HEALTH_CHECK_SECONDS:g}") = setting(
        10.0, "interval of the active health checks (0 = none)")
    eject_after_failures: whole_number(1) = setting(
        3, "failed calls or checks in a row that eject an upstream; it gets one trial call after eject_seconds")
    eject_seconds: number_where(lambda v: v > 0, "{value!r} must be > 0", "number > 0") = setting(
        10.0, "first back-off of an ejected upstream, doubled on each ejection in a row")
    eject_max_seconds: checked(float | None, lambda v: None if v is None else as_number(v),
                               "number >= eject_seconds") = setting(
        None, "the longest back-off (at least eject_seconds); unset: 300, or eject_seconds if that is larger",
        shown=300.0, default_text="300 (or `eject_seconds` if larger)")
    failover_on_busy: Bool = setting(
        True, "a 429 or 503 before the first byte tries the next upstream of the pool")

    def __post_init__(self) -> None:
        if self.eject_max_seconds is None:
            object.__setattr__(self, "eject_max_seconds", max(300.0, self.eject_seconds))

    @model_validator(mode="after")
    def _back_off_grows(self) -> ModelConfig:
        if self.eject_max_seconds < self.eject_seconds:
            raise refusal(f"{self.eject_max_seconds!r} must be >= eject_seconds ({self.eject_seconds:g})",
                          key="eject_max_seconds")
        return self

    @property
    def free(self) -> bool:
        return not (self.prompt_cost_per_1k or self.completion_cost_per_1k)

    @property
    def target_model(self) -> str:
        """The model name the upstream expects."""
        return self.upstream_model or self.id


SECTIONS: dict[str, type] = {
    "server": ServerConfig, "upstream": UpstreamConfig, "store": StoreConfig, "keys": KeysConfig,
    "usage": UsageConfig, "models": ModelConfig, "limits": LimitsConfig, "redis": RedisConfig, "jobs": JobsConfig,
    "saml": SamlConfig, "portal": PortalConfig, "admin": AdminConfig, "metrics": MetricsConfig,
}
"""TOML section -> its settings, in the order the file is checked."""
PORTAL_KEYS = frozenset(settings_of(PortalConfig))
SAML_KEYS = frozenset(settings_of(SamlConfig))
ENV_OVERRIDES = {var: (name, key) for name, cls in SECTIONS.items() for key, info in settings_of(cls).items()
                 for var in info.json_schema_extra["env"]}


@section
class Config:
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    models: tuple[ModelConfig, ...] = ()
    source: str = "<defaults>"
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    portal: PortalConfig | None = None
    admin: AdminConfig = Field(default_factory=AdminConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @property
    def store_url(self) -> str:
        return self.store.url

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        """The rules that span sections, in the order the file is checked."""
        seen: set[str] = set()
        for model in self.models:
            if model.id in seen:
                raise refusal(f"models: id {model.id!r} appears twice", whole=True)
            seen.add(model.id)
        if self.portal and self.portal.dev_login and self.server.host not in LOOPBACK_HOSTS:
            raise refusal(f"portal.dev_login: the development login lets anyone in, so it is only allowed while "
                          f"server.listen is a loopback address (127.0.0.1, ::1 or localhost), not "
                          f"{self.server.host!r}", whole=True)
        for env_var in self.admin.model_secret_envs:
            if not any(m.api_key_env == env_var for m in self.models) and env_var not in self.admin.secret_hosts:
                raise refusal(f"admin.model_secret_envs: {env_var} is bound to no host: no configured model uses it, "
                              f"so list where it may be sent in admin.secret_hosts.{env_var}", whole=True)
        if self.metrics.enabled and self.metrics.port == self.server.port:
            raise refusal(f"metrics.listen: port {self.metrics.port} is the public port (server.listen); metrics "
                          "need a port of their own, reachable only from inside the cluster", whole=True)
        return self
