"""Configuration: the example file loads, environment overrides apply, bad values name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmgateway.config import ConfigError, load_config, parse_config, resolve_secret

ROOT = Path(__file__).resolve().parent.parent


def test_example_file_is_complete_and_valid() -> None:
    config = load_config(str(ROOT / "conf" / "gateway.example.toml"), environ={})
    assert config.server.port == 8000
    assert config.models[0].target_model == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_environment_overrides_what_kubernetes_sets(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:1"\n[[models]]\nid = "a"\n')
    env = {"LLMGW_LISTEN": "0.0.0.0:9000", "LLMGW_STORE_URL": "sqlite:////data/g.db",
           "LLM_DEFAULT_URL": "http://llm.svc/", "LLMGW_SPOOL_DIR": "/spool"}
    config = load_config(str(path), environ=env)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9000)
    assert config.store_url == "sqlite:////data/g.db"
    assert config.usage.spool_dir == "/spool"
    assert config.usage.journal_dir == "/spool/journal", "the journal lives beside the spool unless set"
    assert config.models[0].upstreams[0].url == "http://llm.svc/a"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[server]\nlisten = "[::1]:8123"\n')
    config = load_config(None, environ={"LLMGW_CONFIG": str(path)})
    assert (config.server.host, config.server.port) == ("::1", 8123)


def test_upstream_secret_from_environment_or_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    config = parse_config({"models": [
        {"id": "a", "upstreams": ["http://h:1"], "api_key_env": "UP_KEY"},
        {"id": "b", "upstreams": ["http://h:1"], "api_key_file": str(secret_file)},
        {"id": "c", "upstreams": ["http://h:1"]},
    ]})
    assert resolve_secret(config.models[0], {"UP_KEY": "k1"}) == "k1"
    assert resolve_secret(config.models[1], {}) == "s3cret"
    assert resolve_secret(config.models[2], {}) == ""
    with pytest.raises(ConfigError, match="UP_KEY is not set"):
        resolve_secret(config.models[0], {})


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"server": {"listen": "nohost"}}, "server.listen"),
        ({"server": {"listen": "h:99999"}}, "server.listen"),
        ({"server": {"max_body_bytes": "big"}}, "server.max_body_bytes"),
        ({"server": {"colour": "red"}}, "server.colour"),
        ({"bogus": {}}, "bogus"),
        ({"store": {"url": "postgres://x"}}, "store.url"),
        ({"upstream": {"connect_timeout": -1}}, "upstream.connect_timeout"),
        ({"usage": {"flush_interval_seconds": "soon"}}, "usage.flush_interval_seconds"),
        ({"usage": {"journal_dir": 5}}, "usage.journal_dir"),
        ({"usage": {"journal_progress_seconds": 0}}, "usage.journal_progress_seconds"),
        ({"usage": {"journal_progress_seconds": "often"}}, "usage.journal_progress_seconds"),
        ({"models": {"id": "a"}}, "models"),
        ({"models": [{"upstreams": ["http://h"]}]}, "models[0].id"),
        ({"models": [{"id": "a"}]}, "upstreams is missing"),
        ({"models": [{"id": "a", "upstreams": ["ftp://h"]}]}, "upstreams[0]"),
        ({"models": [{"id": "a", "upstreams": []}]}, "upstreams"),
        ({"models": [{"id": "a", "upstreams": [{"url": "http://h", "weight": 0}]}]}, "weight"),
        ({"models": [{"id": "a", "upstreams": ["http://h"], "kind": "audio"}]}, "kind"),
        ({"models": [{"id": "a", "upstreams": ["http://h"], "active": "maybe"}]}, "active"),
        ({"models": [{"id": "a", "upstreams": ["http://h"]}, {"id": "a", "upstreams": ["http://h"]}]}, "twice"),
        ({"admin": {"model_hosts": "h"}}, "admin.model_hosts"),
        ({"admin": {"model_hosts": [5]}}, "admin.model_hosts"),
        ({"admin": {"model_hosts": ["h/path"]}}, "admin.model_hosts"),
        ({"admin": {"model_hosts": ["h:port"]}}, "admin.model_hosts"),
        ({"admin": {"model_hosts": ["169.254.169.254"]}}, "admin.model_hosts"),
        ({"admin": {"model_hosts": ["metadata.google.internal"]}}, "admin.model_hosts"),
        ({"admin": {"secret_hosts": ["h"]}}, "admin.secret_hosts"),
        ({"admin": {"secret_hosts": {"K": "h"}}}, "admin.secret_hosts.K"),
        ({"admin": {"secret_hosts": {"K": []}}}, "admin.secret_hosts.K"),
        ({"admin": {"secret_hosts": {"K": ["*"]}}}, "admin.secret_hosts.K"),
        ({"admin": {"secret_hosts": {"K": ["[fd00:ec2::254]"]}}}, "admin.secret_hosts.K"),
        ({"admin": {"model_secret_envs": ["UNBOUND"]}}, "admin.model_secret_envs"),
    ],
)
def test_invalid_settings_are_named(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_config(raw)


def test_credentials_in_a_bad_url_are_not_quoted() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"models": [{"id": "a", "upstreams": ["ftp://user:pw-s3cret@h/v1"]}]})
    assert "upstreams[0]" in str(refused.value) and "***@h" in str(refused.value)
    assert "pw-s3cret" not in str(refused.value) and "user" not in str(refused.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.toml"), environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad), environ={})


def test_deployment_config_is_valid_and_follows_the_environment() -> None:
    path = str(ROOT / "kubernetes" / "gateway.toml")
    config = load_config(path, environ={"LLM_DEFAULT_URL": "http://vllm.llm.svc:8000"})
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8000)
    assert config.models[0].upstreams[0].url == "http://vllm.llm.svc:8000/llama-3-8b"


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("health_check_seconds", -1, "health_check_seconds: -1 must be a number >= 0"),
        ("health_check_seconds", 0.05, "health_check_seconds: 0.05 must be 0 (no active checks) or >= 0.1"),
        ("health_check_seconds", "often", "health_check_seconds: 'often' is not a number"),
        ("health_check_path", "health", "health_check_path: 'health' must be a path starting with '/'"),
        ("health_check_path", "/health?full=1", "health_check_path: '/health?full=1' must be a path"),
        ("health_check_path", 5, "health_check_path: 5 must be a string"),
        ("eject_after_failures", 0, "eject_after_failures: 0 must be a whole number >= 1"),
        ("eject_after_failures", 2.5, "eject_after_failures: 2.5 must be a whole number >= 1"),
        ("eject_seconds", 0, "eject_seconds: 0.0 must be > 0"),
        ("eject_seconds", -3, "eject_seconds: -3 must be a number >= 0"),
        ("eject_max_seconds", 5, "eject_max_seconds: 5.0 must be >= eject_seconds (10)"),
        ("failover_on_busy", "maybe", "failover_on_busy: 'maybe' must be true or false"),
    ],
)
def test_bad_pool_settings_get_one_clear_error(setting: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"models": [{"id": "a", "upstreams": ["http://h"], setting: value}]})
    assert str(refused.value).startswith(f"models[0] (a).{says}"), str(refused.value)


def test_pool_settings_have_defaults_for_vllm_and_llama_cpp_python() -> None:
    [model] = parse_config({"models": [{"id": "a", "upstreams": ["http://h"]}]}).models
    assert (model.health_check_path, model.health_check_seconds, model.eject_after_failures) == ("/health", 10.0, 3)
    assert (model.eject_seconds, model.eject_max_seconds, model.failover_on_busy) == (10.0, 300.0, True)
    [model] = parse_config({"models": [{"id": "a", "upstreams": ["http://h"], "health_check_seconds": 0,
                                        "eject_seconds": 600, "failover_on_busy": False}]}).models
    assert (model.health_check_seconds, model.eject_max_seconds, model.failover_on_busy) == (0.0, 600.0, False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metrics": {"listen": "nohost"}}, "metrics.listen: 'nohost' is not host:port"),
        ({"metrics": {"listen": "h:99999"}}, "metrics.listen: 'h:99999' is not host:port"),
        ({"metrics": {"listen": "h:port"}}, "metrics.listen: port 'port' is not a number"),
        ({"metrics": {"listen": 9464}}, "metrics.listen: 9464 must be a string"),
        ({"metrics": {"listen": "0.0.0.0:8000"}}, "metrics.listen: port 8000 is the public port"),
        ({"server": {"listen": "0.0.0.0:9464"}, "metrics": {"listen": "127.0.0.1:9464"}},
         "metrics.listen: port 9464 is the public port"),
        ({"metrics": {"port": 9464}}, "metrics.port is not a known setting"),
        ({"metrics": "on"}, r"\[metrics\] must be a table"),
        ({"server": {"log_format": "xml"}}, "server.log_format: 'xml' must be 'text' or 'json'"),
        ({"server": {"log_format": True}}, "server.log_format: True must be a string"),
    ],
)
def test_bad_metrics_and_log_settings_get_one_clear_error(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_metrics_are_off_unless_a_listener_is_set(tmp_path: Path) -> None:
    assert not parse_config({}).metrics.enabled
    assert parse_config({}).server.log_format == "text"
    config = parse_config({"metrics": {"listen": "0.0.0.0:9464"}, "server": {"log_format": "json"}})
    assert (config.metrics.host, config.metrics.port, config.metrics.enabled) == ("0.0.0.0", 9464, True)
    assert config.server.log_format == "json"
    path = tmp_path / "g.toml"
    path.write_text("")
    assert load_config(str(path), environ={"LLMGW_METRICS_LISTEN": "0.0.0.0:9465"}).metrics.port == 9465
