"""The example config and the README's settings tables are rendered from the declarations: a
setting added, changed or documented by hand elsewhere fails here until `python -m
llmgateway.config.docs --write` is run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmgateway.config import docs, load_config
from llmgateway.config.sections import SECTIONS, settings_of
from tests.conftest import ROOT


def test_the_committed_example_and_readme_tables_follow_the_declarations() -> None:
    assert docs.stale(ROOT) == [], "run: python -m llmgateway.config.docs --write"


def test_the_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    shutil.copy(ROOT / docs.EXAMPLE, tmp_path / docs.EXAMPLE)
    readme = (ROOT / docs.README).read_text(encoding="utf-8")
    edited = readme.replace("| `server.max_headers` | 100 |", "| `server.max_headers` | 50 |")
    (tmp_path / docs.README).write_text(edited, encoding="utf-8")
    assert docs.stale(tmp_path) == [str(docs.README)]
    docs.write(tmp_path)
    assert docs.stale(tmp_path) == []
    assert (tmp_path / docs.README).read_text(encoding="utf-8") == readme


def test_the_command_checks_the_repository() -> None:
    done = subprocess.run([sys.executable, "-m", "llmgateway.config.docs", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_setting_is_in_a_readme_table() -> None:
    readme = (ROOT / docs.README).read_text(encoding="utf-8")
    tabled = {section for match in docs.TABLE.finditer(readme) for section in match.group(2).split()}
    assert tabled == set(SECTIONS)
    for name, cls in SECTIONS.items():
        for key in settings_of(cls):
            assert f"`{'models[]' if name == 'models' else name}.{key}`" in readme


@pytest.mark.parametrize("path", ["conf/gateway.example.toml", "conf/demo.toml", "kubernetes/gateway.toml"])
def test_the_shipped_configs_load(path: str) -> None:
    config = load_config(str(ROOT / path), environ={})
    assert config.models
