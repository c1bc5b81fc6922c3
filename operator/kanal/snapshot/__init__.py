"""The Kubernetes-free routing snapshot and the compiler that builds it from API objects."""

from kanal.snapshot._compile import compile_snapshot, hash_api_key
from kanal.snapshot._model import (
    ApiKey,
    BackendConfig,
    ModelInfo,
    Problem,
    RetryPolicy,
    RouteConfig,
    Snapshot,
    Target,
    Tier,
)
from kanal.snapshot._wire import (
    SNAPSHOT_KEY,
    SNAPSHOT_SECRET,
    VERSION_ANNOTATION,
    from_bytes,
    to_bytes,
)

__all__ = [
    "SNAPSHOT_KEY",
    "SNAPSHOT_SECRET",
    "VERSION_ANNOTATION",
    "ApiKey",
    "BackendConfig",
    "ModelInfo",
    "Problem",
    "RetryPolicy",
    "RouteConfig",
    "Snapshot",
    "Target",
    "Tier",
    "compile_snapshot",
    "from_bytes",
    "hash_api_key",
    "to_bytes",
]
