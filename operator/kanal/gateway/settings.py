"""The gateway's one typed settings tree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 9090
    max_body_bytes: int = 8 * 1024 * 1024
    """Larger request bodies get 413."""
    cooldown_after_failures: int = 3
    """Consecutive failed attempts that put a backend into cooldown."""
    cooldown_seconds: float = 10.0
    """How long a backend sits out after repeated failures (a 429's Retry-After wins)."""
    stream_idle_timeout: float = 60.0
    """Longest silence between two chunks of an upstream stream."""
    max_connections_per_backend: int = 256
    anonymous_tenant: str | None = None
    """Tenant of callers without credentials; None refuses them with 401."""
