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
    redis_url: str | None = None
    """Shared state for limits, budgets, sessions and cache; None keeps it in memory."""
    redis_max_connections: int = 256
    """Connections per gateway process; more concurrent commands wait for a free one."""
    redis_timeout: float = 1.0
    """Seconds a Redis command may take before it counts as Redis being unreachable."""
    redis_fail_open: bool = False
    """When Redis is unreachable: admit requests without limit/budget checks (True) or
    refuse them with 503 (False). Either way it is logged and counted, never silent."""
    context_max_turns: int = 200
    """Cap on stored messages per session (oldest dropped first)."""
    context_max_bytes: int = 1024 * 1024
    """Cap on stored bytes per session (oldest dropped first)."""
    cache_max_bytes: int = 1024 * 1024
    """Responses larger than this are not cached."""
    kube_api_url: str | None = None
    """Kubernetes API for TokenReview of ServiceAccount tokens; None disables them."""
    kube_ca_file: str | None = None
    kube_token_file: str | None = None
    """The gateway's own credentials for TokenReview (a mounted ServiceAccount token)."""
    kube_client_cert_file: str | None = None
    kube_client_key_file: str | None = None
    """Alternatively, client-certificate credentials (tests, out-of-cluster runs)."""
    token_review_cache_seconds: float = 30.0
    """How long a TokenReview verdict is reused for the same token."""
    # -- usage events (GET /v1/usage, kanal usage) -----------------------------------------
    usage_key: str = "kanal:{usage}"
    """Redis Stream of the usage events; the per-day aggregates live under ``<key>:day:``
    (one hash tag: one Redis Cluster slot, so each batch is one MULTI/EXEC)."""
    usage_stream_maxlen: int = 1_000_000
    """Events kept in the Redis Stream (approximately: ``XADD MAXLEN ~``)."""
    usage_memory_events: int = 10_000
    """Events kept in memory when the gateway has no Redis (the aggregates are kept whole)."""
    usage_queue_size: int = 10_000
    """Events waiting to be written; beyond that they are dropped (counted and logged)."""
    usage_retention_days: int = 400
    """How long the per-day usage aggregates (what ``/v1/usage`` sums) are kept."""
