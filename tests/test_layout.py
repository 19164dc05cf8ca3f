"""The package layout's two rules, checked on the source: the core never imports the web layer,
and no module reaches for another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The command's composition root: `python -m llmgateway serve` needs the web layer's serve.
MAY_IMPORT_HANDLERS = {ROOT / "llmgateway" / "__main__.py"}


def modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every `from ... import` and `import` in `path`."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
    return found


def test_the_core_never_imports_the_web_layer() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in modules("llmgateway") if path not in MAY_IMPORT_HANDLERS
                 for line, module, _ in imported(path) if module == "handlers" or module.startswith("handlers.")]
    assert offenders == []


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
                 for path in modules("llmgateway", "handlers")
                 for line, module, names in imported(path) if module.split(".")[0] in ("llmgateway", "handlers")
                 for name in names if name.startswith("_")]
    assert offenders == []


def test_the_rules_above_see_imports() -> None:
    """The scan resolves relative imports; without that the two tests above would pass vacuously."""
    modules_seen = {module for _, module, _ in imported(ROOT / "llmgateway" / "__main__.py")}
    assert "handlers.app" in modules_seen
    assert "llmgateway.gateway" in {module for _, module, _ in imported(ROOT / "llmgateway" / "relay" / "proxy.py")}
