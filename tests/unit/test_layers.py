"""Import direction is enforced, not hoped for: api <- snapshot <- {controller, gateway};
api <- prompts (the texts sent to models) <- {gateway, kanal_functions}; aio (running a
server's loop) imports nothing of ours; the function runtime (functions/runtime/kanal_functions)
uses only api, prompts, aio and the gRPC stubs of kanal."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "operator" / "kanal"
FUNCTIONS = ROOT / "functions" / "runtime" / "kanal_functions"

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
    "kanal.snapshot": (
        "kanal.controller",
        "kanal.gateway",
        "kanal_functions",
        "kopf",
        "kubernetes",
    ),
    "kanal.gateway": ("kanal.controller", "kanal_functions", "kopf"),
    "kanal.controller": ("kanal.gateway", "kanal_functions"),
    "kanal.prompts": (
        "kanal.snapshot",
        "kanal.controller",
        "kanal.gateway",
        "kanal.cli",
        "kanal.local",
        "kanal_functions",
        "aiohttp",
        "grpc",
        "redis",
    ),
    "kanal.aio": (
        "kanal.api",
        "kanal.snapshot",
        "kanal.controller",
        "kanal.gateway",
        "kanal.prompts",
        "kanal.cli",
        "kanal.local",
        "kanal_functions",
    ),
    "kanal_functions": (
        "kanal.gateway",
        "kanal.controller",
        "kanal.snapshot",
        "kanal.cli",
        "kanal.local",
        "kanal.manifests",
        "kopf",
        "kubernetes",
        "redis",
    ),
}
FORBIDDEN["kanal.api"] += ("kanal.prompts", "kanal_functions")


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
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
    paths = [(p, PACKAGE) for p in PACKAGE.rglob("*.py")]
    paths += [(p, FUNCTIONS) for p in FUNCTIONS.rglob("*.py")]
    for path, package in paths:
        module = _module_name(path, package)
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
    assert len(list(FUNCTIONS.rglob("*.py"))) >= 4  # ... and at the function runtime


def test_checker_catches_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself works: a planted bad import is reported."""
    fake = tmp_path / "kanal"
    (fake / "api").mkdir(parents=True)
    (fake / "api" / "bad.py").write_text("from kanal.gateway import app\nimport kopf\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    functions = tmp_path / "kanal_functions"
    functions.mkdir()
    (functions / "leak.py").write_text("import kanal.gateway.service\nfrom kanal.v1 import x\n")
    (fake / "gateway").mkdir()
    (fake / "gateway" / "up.py").write_text("from kanal_functions.prompt import main\n")
    monkeypatch.setitem(globals(), "FUNCTIONS", functions)
    assert sorted(_violations()) == [
        "kanal.api.bad imports kanal.gateway",
        "kanal.api.bad imports kopf",
        "kanal.gateway.up imports kanal_functions.prompt",
        "kanal_functions.leak imports kanal.gateway.service",
    ]


def _private_violations() -> list[str]:
    """Imports of a package's private module (``pkg._mod``) from outside ``pkg``."""
    out = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path, PACKAGE)
        if module.startswith("kanal.v1"):  # protoc's output
            continue
        for imported in _imports(path):
            if not imported.startswith("kanal."):
                continue
            parts = imported.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__") and i > 0:
                    owner = ".".join(parts[:i])
                    if module != owner and not module.startswith(owner + "."):
                        out.append(f"{module} imports {imported}")
                    break
    return out


def test_private_modules_stay_behind_their_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_``-modules are reached through their package's public names only."""
    assert _private_violations() == []
    fake = tmp_path / "kanal"
    (fake / "gateway" / "telemetry").mkdir(parents=True)
    (fake / "gateway" / "telemetry" / "_sink.py").write_text("from kanal.gateway._a import b\n")
    (fake / "cli.py").write_text("from kanal.gateway.telemetry._sink import x\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    (fake / "controller").mkdir()
    (fake / "controller" / "run.py").write_text("import kanal.gateway._a\n")
    assert sorted(_private_violations()) == [
        "kanal.cli imports kanal.gateway.telemetry._sink",
        "kanal.controller.run imports kanal.gateway._a",
    ]
