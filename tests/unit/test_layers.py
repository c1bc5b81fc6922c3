"""Import direction is enforced, not hoped for: api <- snapshot <- {controller, gateway}."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "operator" / "kanal"

# package -> prefixes it must never import (ours and third-party)
FORBIDDEN = {
    "kanal.api": (
        "kanal.snapshot",
        "kanal.controller",
        "kanal.gateway",
        "kanal.cli",
        "kanal.manifests",
        "kopf",
        "kubernetes",
        "aiohttp",
        "grpc",
        "redis",
    ),
    "kanal.snapshot": ("kanal.controller", "kanal.gateway", "kopf", "kubernetes"),
    "kanal.gateway": ("kanal.controller", "kopf"),
    "kanal.controller": ("kanal.gateway",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _violations() -> list[str]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        for layer, banned in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for imported in _imports(path):
                if any(imported == b or imported.startswith(b + ".") for b in banned):
                    out.append(f"{module} imports {imported}")
    return out


def test_layers_hold() -> None:
    assert _violations() == []
    api_modules = [p for p in (PACKAGE / "api").rglob("*.py")]
    assert len(api_modules) >= 5  # the check really looked at the API package


def test_checker_catches_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself works: a planted bad import is reported."""
    fake = tmp_path / "kanal"
    (fake / "api").mkdir(parents=True)
    (fake / "api" / "bad.py").write_text("from kanal.gateway import app\nimport kopf\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert sorted(_violations()) == [
        "kanal.api.bad imports kanal.gateway",
        "kanal.api.bad imports kopf",
    ]
