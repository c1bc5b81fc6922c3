#!/usr/bin/env python3
"""Regenerates the Python gRPC code under operator/ from proto/.

    .venv/bin/python hack/gen_proto.py              # writes operator/kanal/v1/*_pb2*.py[i]
    .venv/bin/python hack/gen_proto.py --out DIR    # writes DIR/kanal/v1/... (the drift test)

Generation is only reproducible with the grpcio-tools version pinned in pyproject.toml
(its bundled protoc fixes the generated text and the protobuf gencode version), so this
refuses to run with another one. tests/unit/test_proto_drift.py fails when the committed
files differ from what this writes.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "operator"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def pinned_grpcio_tools() -> str:
    """The exact grpcio-tools version pinned in pyproject.toml's test extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["test"]:
        match = re.fullmatch(r"grpcio-tools\s*==\s*([0-9][0-9A-Za-z.+-]*)", requirement.strip())
        if match:
            return match.group(1)
    raise SystemExit("pyproject.toml: the test extra must pin grpcio-tools exactly (==X.Y.Z)")


def check_tools() -> None:
    want = pinned_grpcio_tools()
    have = metadata.version("grpcio-tools")
    if have != want:
        raise SystemExit(
            f"grpcio-tools {have} is installed but pyproject.toml pins {want}; "
            "run `pip install -e '.[test]'` so the generated code matches"
        )


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generated_files(out: Path) -> list[Path]:
    """Generated files of every proto package below ``out`` (kanal/v1/... for now)."""
    found: set[Path] = set()
    for proto in proto_files():
        package_dir = out / proto.parent.relative_to(PROTO_ROOT)
        found.update(p for p in package_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))
    return sorted(found)


def generate(out: Path) -> list[Path]:
    """Runs protoc (from grpcio-tools) on every .proto under proto/; returns what it wrote."""
    check_tools()
    protos = proto_files()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    out.mkdir(parents=True, exist_ok=True)
    for proto in protos:  # stale files of a removed or renamed message would linger otherwise
        package_dir = out / proto.parent.relative_to(PROTO_ROOT)
        if package_dir.is_dir():
            for old in package_dir.iterdir():
                if old.name.endswith(GENERATED_SUFFIXES):
                    old.unlink()
    # `python -m grpc_tools.protoc` adds the include path of google/protobuf/*.proto itself
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ],
        check=True,
        cwd=PROTO_ROOT,
    )
    return generated_files(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output root (default: operator/)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path.relative_to(args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
