"""The per-test view of the control plane that the `kube` fixture hands out."""

from __future__ import annotations

import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s

from harness.controlplane import ControlPlane


def has_namespace_flag(args: tuple[str, ...]) -> bool:
    """True if kubectl args already pick a namespace (-n, --namespace, -A, --all-namespaces)."""
    for arg in args:
        if arg == "--":
            break
        if arg in ("-A", "--all-namespaces") or arg.startswith(
            ("--all-namespaces=", "--namespace")
        ):
            return True
        if arg.startswith("-n") and not arg.startswith("--"):
            return True
    return False


def namespace_for(test_name: str) -> str:
    """A DNS-1123 label (<= 63 chars) derived from the test name, plus a random suffix."""
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    base = base.removeprefix("test-") or "t"
    return f"{base[:56].rstrip('-')}-{secrets.token_hex(3)}"


@dataclass
class Kube:
    """A fresh namespace for one test plus clients: `api` (an ApiClient with its own
    Configuration), `core`, `custom`, `apiext`, and `kubectl()`."""

    control_plane: ControlPlane
    kubeconfig: Path
    namespace: str
    api: k8s.ApiClient
    core: k8s.CoreV1Api = field(init=False)
    custom: k8s.CustomObjectsApi = field(init=False)
    apiext: k8s.ApiextensionsV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.apiext = k8s.ApiextensionsV1Api(self.api)

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,  # mirrors subprocess.run
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl; in this test's namespace unless -n/--namespace/-A is given."""
        if not has_namespace_flag(args):
            args = ("--namespace", self.namespace, *args)
        return self.control_plane.kubectl(*args, check=check, input=input)
