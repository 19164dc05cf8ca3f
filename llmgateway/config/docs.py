"""The example config file and the README's settings tables, rendered from the declarations.

    python -m llmgateway.config.docs --check   # exit 1 when a committed copy differs
    python -m llmgateway.config.docs --write   # rewrite them

The README keeps its prose; a table sits between `<!-- settings: SECTION ... -->` and
`<!-- /settings -->` and is rewritten whole. tests/test_settings_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from .sections import SECTIONS, settings_of
from .types import Allowed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = Path("conf/gateway.example.toml")
README = Path("README.md")
EXAMPLE_ORDER = ("server", "upstream", "store", "keys", "usage", "limits", "redis", "jobs", "metrics", "admin",
                 "portal", "saml", "models")
EXAMPLE_HEADER = """\
# LLM Gateway — complete example configuration.
#
# Start with:   llmgateway serve --config conf/gateway.example.toml
# Every setting is shown with its default (or, commented out, an example where the default is
# none). Environment variables override the settings marked "env:" (what a Kubernetes deployment
# sets). Secrets never go in this file: name the environment variable (api_key_env) or file
# (api_key_file) that holds them. Any invalid value stops the start with one message naming the
# setting.
#
# Generated from llmgateway/config/sections.py by `python -m llmgateway.config.docs --write`.
"""
EXAMPLE_FOOTER = """
# A model served from the default_url layout (needs [upstream] default_url or LLM_DEFAULT_URL):
# [[models]]
# id = "mistral-7b"
"""
TABLE = re.compile(r"(<!-- settings: ([a-z ]+) -->\n).*?(<!-- /settings -->)", re.DOTALL)


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra  # type: ignore[return-value]


def _default(info: FieldInfo) -> Any:
    return info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def _sentence(info: FieldInfo) -> str:
    text = info.description or ""
    env = _extra(info)["env"]
    if env:
        text += f" (env: {' or '.join(env)})"
    return text[:1].upper() + text[1:] + "."


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, 98, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def _intro(cls: type) -> list[str]:
    doc = " ".join((cls.__doc__ or "").split())
    return _comment(doc) if doc else []


def render_example() -> str:
    """conf/gateway.example.toml: every setting with its help, section by section."""
    lines = EXAMPLE_HEADER.splitlines()
    for name in EXAMPLE_ORDER:
        cls = SECTIONS[name]
        lines += ["", *_intro(cls), f"[[{name}]]" if name == "models" else f"[{name}]"]
        tables = []
        for key, info in settings_of(cls).items():
            extra, default = _extra(info), _default(info)
            if isinstance(default, dict) and name != "models":
                tables.append((key, info))
                continue
            lines += _comment(_sentence(info))
            if extra["shown"] is not None:
                lines.append(f"{key} = {toml_value(extra['shown'])}")
            elif extra["example"] is not None:
                lines.append(f"# {key} = {toml_value(extra['example'])}")
            else:
                lines.append(f"{key} = {toml_value(default)}")
        for key, info in tables:
            lines += ["", *_comment(_sentence(info)), f"[{name}.{key}]"]
            lines += [f"# {k} = {toml_value(v)}" for k, v in (_extra(info)["example"] or {}).items()]
    return "\n".join(lines) + "\n" + EXAMPLE_FOOTER


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _readme_default(info: FieldInfo) -> str:
    extra, default = _extra(info), _default(info)
    if extra["default_text"]:
        return extra["default_text"]
    if default in ({}, None):
        return "none"
    if default == "":
        return '""'
    if isinstance(default, (bool, int, float)):
        return toml_value(default)
    return f"`{default}`" if isinstance(default, str) else f"`{toml_value(default)}`"


def _allowed(info: FieldInfo) -> str:
    return next((m.text for m in info.metadata if isinstance(m, Allowed)), "")


def render_table(sections: list[str]) -> str:
    """The README's table of these sections' settings."""
    rows = ["| Setting | Default | Allowed | Meaning |", "| --- | --- | --- | --- |"]
    for name in sections:
        for key, info in settings_of(SECTIONS[name]).items():
            setting = f"models[].{key}" if name == "models" else f"{name}.{key}"
            rows.append(f"| `{setting}` | {_cell(_readme_default(info))} | {_cell(_allowed(info))} | "
                        f"{_cell(_sentence(info)[:-1])} |")
    return "\n".join(rows) + "\n"


def render_readme(text: str) -> str:
    """The README with every marked table rendered anew."""
    return TABLE.sub(lambda m: m.group(1) + render_table(m.group(2).split()) + m.group(3), text)


def stale(root: Path = ROOT) -> list[str]:
    """The committed files that differ from what the declarations render."""
    readme = (root / README).read_text(encoding="utf-8")
    return [str(path) for path, rendered in ((EXAMPLE, render_example()), (README, render_readme(readme)))
            if (root / path).read_text(encoding="utf-8") != rendered]


def write(root: Path = ROOT) -> None:
    (root / EXAMPLE).write_text(render_example(), encoding="utf-8")
    (root / README).write_text(render_readme((root / README).read_text(encoding="utf-8")), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmgateway.config.docs", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 if the example or the README's tables differ")
    action.add_argument("--write", action="store_true", help="rewrite them from the declarations")
    args = parser.parse_args(argv)
    if args.write:
        write()
        return 0
    differ = stale()
    for path in differ:
        print(f"{path} differs from the settings' declarations: run python -m llmgateway.config.docs --write",
              file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
