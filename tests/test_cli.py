"""The llmgateway command: keys and usage against a real SQLite store, and its bad input."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llmgateway.cli.main import CliError, parse_time
from tests.conftest import ROOT, model_toml


@pytest.fixture
def gw(start_gateway):
    """A configured but not running gateway: the CLI works on its store directly."""
    return start_gateway(model_toml("a", ["http://127.0.0.1:9"]) + model_toml("b", ["http://127.0.0.1:9"]), run=False)


def test_create_prints_only_the_key_and_stores_only_its_hash(gw) -> None:
    result = gw.cli("keys", "create", "--user", "alice", "--name", "laptop", "--models", "a", "--expires-days", "30")
    key = result.stdout.strip()
    assert re.fullmatch(r"sk-lgw-[A-Za-z0-9_-]{43}", key)
    assert result.stdout == key + "\n"
    assert key not in result.stderr
    [row] = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert row["owner"] == "alice" and row["models"] == ["a"] and row["status"] == "active"
    assert "hash" not in row and key.startswith(row["prefix"]) and row["expires"] > row["created"]
    stored = sqlite3.connect(gw.db_path).execute("SELECT hash, prefix FROM api_keys").fetchone()
    assert key not in stored


def test_keys_are_random(gw) -> None:
    keys = {gw.create_key(name=f"k{i}") for i in range(3)}
    assert len(keys) == 3


def test_list_filters_and_revoke(gw) -> None:
    gw.create_key(user="alice", name="one")
    gw.create_key(user="bob", name="two")
    rows = json.loads(gw.cli("keys", "list", "--json", "--user", "alice").stdout)
    assert [r["name"] for r in rows] == ["one"]
    revoked = gw.cli("keys", "revoke", rows[0]["id"])
    assert "revoked" in revoked.stderr
    assert json.loads(gw.cli("keys", "list", "--json", "--active").stdout)[0]["name"] == "two"
    table = gw.cli("keys", "list").stdout
    assert "revoked" in table and "active" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--user", "u", "--name", "n", "--models", "zzz"], "unknown model 'zzz'"),
        (["keys", "create", "--user", " ", "--name", "n"], "user must not be empty"),
        (["keys", "create", "--user", "u", "--name", ""], "name must not be empty"),
        (["keys", "create", "--user", "u", "--name", "n" * 101], "--name: The name must be at most 100 characters"),
        (["keys", "create", "--user", "u", "--name", "tab\there"], "without control characters"),
        (["keys", "create", "--user", "u", "--name", "n", "--expires-days", "-1"], "must be greater than 0"),
        (["keys", "create", "--user", "u", "--name", "n", "--expires-days", "soon"], "is not a number"),
        (["keys", "create", "--name", "n"], "--user"),
        (["keys", "revoke", "key_nope"], "no key with id 'key_nope'"),
        (["usage", "--since", "yesterday"], "cannot read time 'yesterday'"),
        (["usage", "--since", "1d", "--until", "2d"], "--until must be later than --since"),
        (["usage", "--by", "colour"], "invalid choice"),
    ],
)
def test_bad_input_gets_one_clear_line_and_status_2(gw, args: list[str], message: str) -> None:
    result = gw.cli(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_invalid_config_names_the_setting(gw) -> None:
    gw.config_path.write_text('[server]\nlisten = "nope"\n')
    result = gw.cli("keys", "list", check=False)
    assert result.returncode == 2 and "server.listen" in result.stderr and "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_says_so(gw) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gw.port))
        taken.listen()
        result = gw.cli("serve", check=False)
    assert result.returncode == 2
    assert f"server.listen: cannot listen on 127.0.0.1:{gw.port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_table_and_json_on_an_empty_store(gw) -> None:
    assert "TOTAL" in gw.cli("usage").stdout
    report = json.loads(gw.cli("usage", "--by", "day", "--since", "7d", "--json").stdout)
    assert report["rows"] == [] and report["totals"]["requests"] == 0


def test_parse_time() -> None:
    assert parse_time("1h", now=10_000.0) == 6_400.0
    assert parse_time("2w", now=2_000_000.0) == 2_000_000.0 - 2 * 604_800
    assert parse_time("1970-01-02") == 86_400.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(CliError):
        parse_time("7 days")


def test_limit_overrides_are_stored_and_shown_with_the_defaults(start_gateway) -> None:
    gw = start_gateway(model_toml("a", ["http://127.0.0.1:9"]), "[limits.user]\ncost_per_day = 2\n", run=False)
    gw.create_key("alice")
    key_id = json.loads(gw.cli("keys", "list", "--json").stdout)[0]["id"]
    assert json.loads(gw.cli("limits", "set", "--user", "alice", "requests_per_minute=30").stdout) == {
        "requests_per_minute": 30.0}
    gw.cli("limits", "set", "--user", "alice", "cost_per_day=0")
    shown = json.loads(gw.cli("limits", "show", "--user", "alice").stdout)
    assert shown["defaults"] == {"cost_per_day": 2.0}
    assert shown["effective"] == {"requests_per_minute": 30.0}, "an override of 0 lifts the default"
    gw.cli("limits", "set", "--key", key_id, "concurrent_requests=2")
    assert json.loads(gw.cli("limits", "show", "--key", key_id).stdout)["effective"] == {"concurrent_requests": 2.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limits", "set", "--user", "a", "requests_per_hour=3"], "unknown limit 'requests_per_hour'"),
        (["limits", "set", "--user", "a", "requests_per_minute"], "limits are NAME=NUMBER"),
        (["limits", "set", "--user", "a", "cost_per_day=lots"], "limits are NAME=NUMBER"),
        (["limits", "set", "--user", "a", "cost_per_day=-1"], "limits must be >= 0"),
        (["limits", "set", "--key", "key_missing", "cost_per_day=1"], "no key with id 'key_missing'"),
        (["limits", "show", "--key", "key_missing"], "no key with id 'key_missing'"),
        (["rollups", "rebuild", "--since", "yesterday"], "cannot read time 'yesterday'"),
        (["rollups", "rebuild", "--since", "1d", "--until", "2d"], "--until must be later than --since"),
    ],
)
def test_limits_and_rollups_bad_input(gw, args: list[str], message: str) -> None:
    result = gw.cli(*args, check=False)
    assert result.returncode == 2 and message in result.stderr
    if gw.db_path.exists():
        changed = sqlite3.connect(gw.db_path).execute("SELECT count(*) FROM users WHERE limits != '{}'").fetchone()
        assert changed[0] == 0, "nothing half-written"


def test_rollups_rebuild_from_the_cli(gw) -> None:
    result = gw.cli("rollups", "rebuild", "--since", "2d")
    assert "hour: 0 rows" in result.stderr and "day: 0 rows" in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmgateway", *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=ROOT)


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp, "is a directory, not a TOML file"),
    (lambda tmp: tmp / "missing.toml", "does not exist"),
    (lambda tmp: (tmp / "latin1.toml").write_bytes(b"title = '\xe9'\n") and tmp / "latin1.toml", "is not UTF-8 text"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "gateway.toml", "cannot be read: Not a directory"),
])
def test_a_config_path_that_is_no_config_file_gets_one_line(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    for command in (["serve"], ["keys", "list"]):
        result = run_cli(*command, "--config", str(path))
        assert result.returncode == 2
        assert result.stderr == f"llmgateway: config file {str(path)!r} {message}\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_config_file_gets_one_line(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("")
    path.chmod(0)
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == f"llmgateway: config file {str(path)!r} cannot be read: Permission denied\n"
