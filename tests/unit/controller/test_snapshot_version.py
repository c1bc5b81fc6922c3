"""The snapshot version must be the same in every process: the operator persists it, a
gateway (another process, another hash seed) checks it when it reads the Secret, and a
restarted operator must not see a "new" version of unchanged objects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SCRIPT = """
import sys
from kanal import manifests
from kanal.snapshot import compile_snapshot, from_bytes, to_bytes
loaded = manifests.load([sys.argv[1]])
snapshot = compile_snapshot(loaded.backends, loaded.routes, loaded.secrets)
if sys.argv[2] == "write":
    open(sys.argv[3], "wb").write(to_bytes(snapshot))
    print(snapshot.version)
else:
    print(from_bytes(open(sys.argv[3], "rb").read()).version)
"""


def run(seed: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(EXAMPLES), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": seed},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_version_is_independent_of_the_hash_seed(tmp_path: Path) -> None:
    path = str(tmp_path / "snapshot.json")
    written = run("1", "write", path)
    assert run("2", "read", path) == written
    assert run("3", "write", str(tmp_path / "other.json")) == written
