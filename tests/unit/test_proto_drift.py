"""The committed gRPC code under operator/kanal/v1 is exactly what proto/ generates."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "hack" / "gen_proto.py"
OUTPUT = ROOT / "operator"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted((root / "kanal").rglob("*"))
        if p.name.endswith(SUFFIXES)
    }


def _pinned(name: str) -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in extras["optional-dependencies"]["test"]:
        match = re.fullmatch(rf"{name}\s*==\s*(\S+)", requirement.strip())
        if match:
            return match.group(1)
    pytest.fail(f"pyproject.toml's test extra must pin {name} exactly (==X.Y.Z)")


def test_grpcio_tools_is_the_pinned_version() -> None:
    pinned, installed = _pinned("grpcio-tools"), metadata.version("grpcio-tools")
    assert installed == pinned, (
        f"grpcio-tools {installed} is installed, pyproject.toml pins {pinned}: "
        "run `pip install -e '.[test]'`"
    )


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh, committed = _generated(tmp_path), _generated(OUTPUT)
    assert fresh, "the generator wrote nothing"
    assert sorted(committed) == sorted(fresh), "generated files differ from the committed ones"
    diffs = [
        "".join(
            difflib.unified_diff(
                committed[name].splitlines(keepends=True),
                fresh[name].splitlines(keepends=True),
                f"committed/{name}",
                f"generated/{name}",
            )
        )
        for name in sorted(fresh)
        if committed[name] != fresh[name]
    ]
    assert not diffs, (
        "operator/kanal/v1 is stale: run `.venv/bin/python hack/gen_proto.py` and commit\n"
        + "\n".join(diffs)[:5000]
    )


def test_generated_code_imports_under_the_installed_runtime() -> None:
    """The protobuf and grpcio runtimes accept the gencode's version."""
    from kanal.v1 import gateway_pb2, gateway_pb2_grpc

    assert gateway_pb2.DESCRIPTOR.package == "kanal.v1"
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    assert [m.name for m in service.methods] == ["Chat", "ChatStream", "Embed", "ListModels"]
    assert service.methods_by_name["ChatStream"].server_streaming
    assert hasattr(gateway_pb2_grpc, "GatewayStub")
