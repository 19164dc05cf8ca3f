"""The gateway's settings: declared once in `sections`, read and checked by `load`, documented by `docs`."""

from .load import ConfigError, load_config, parse_config, parse_model, resolve_secret
from .sections import (
    DIGEST_ALGORITHMS,
    LIMIT_NAMES,
    MODEL_KINDS,
    MODEL_LIMIT_NAMES,
    PORTAL_KEYS,
    SAML_KEYS,
    SIGNATURE_ALGORITHMS,
    AdminConfig,
    Config,
    JobsConfig,
    KeysConfig,
    LimitsConfig,
    MetricsConfig,
    ModelConfig,
    PortalConfig,
    RedisConfig,
    SamlConfig,
    ServerConfig,
    StoreConfig,
    Upstream,
    UpstreamConfig,
    UsageConfig,
)

__all__ = [
    "DIGEST_ALGORITHMS", "LIMIT_NAMES", "MODEL_KINDS", "MODEL_LIMIT_NAMES", "PORTAL_KEYS", "SAML_KEYS",
    "SIGNATURE_ALGORITHMS", "AdminConfig", "Config", "ConfigError", "JobsConfig", "KeysConfig", "LimitsConfig",
    "MetricsConfig", "ModelConfig", "PortalConfig", "RedisConfig", "SamlConfig", "ServerConfig", "StoreConfig",
    "Upstream", "UpstreamConfig", "UsageConfig", "load_config", "parse_config", "parse_model", "resolve_secret",
]
