"""The kanal test bench: real Redis, a real kube-apiserver + etcd + kube-controller-manager
(the envtest pattern, no nodes), the real kubectl and helm. Used by tests/conftest.py."""

from harness.certs import CertFiles, write_certs
from harness.controlplane import ControlPlane
from harness.kube import Kube, namespace_for
from harness.procs import StartupError
from harness.redis import RedisServer
from harness.tools import (
    ToolMissing,
    find_helm,
    find_k8s_bin,
    find_kubectl,
    find_redis_server,
)

__all__ = [
    "CertFiles",
    "ControlPlane",
    "Kube",
    "RedisServer",
    "StartupError",
    "ToolMissing",
    "find_helm",
    "find_k8s_bin",
    "find_kubectl",
    "find_redis_server",
    "namespace_for",
    "write_certs",
]
