"""The gateway's one typed settings tree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 9090
    metrics_port: int | None = None
    """Serve ``/metrics`` on this port of its own (0 picks one) and not on the callers' HTTP
    port; None serves it on the HTTP port (``kanal up``)."""
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
    # -- observability (OpenTelemetry; the CLI reads the standard OTEL_* variables) ------
    traces_exporter: Literal["none", "otlp", "console"] = "none"
    """OTEL_TRACES_EXPORTER: ``none`` builds no tracer at all (no cost on the hot path)."""
    metrics_exporter: Literal["none", "otlp"] = "none"
    """OTEL_METRICS_EXPORTER: ``otlp`` pushes the metrics also by OTLP (``/metrics`` always
    serves them in Prometheus format)."""
    otlp_endpoint: str | None = None
    """OTEL_EXPORTER_OTLP_ENDPOINT: base URL (OTLP/HTTP); ``/v1/traces``, ``/v1/metrics``
    are appended."""
    otlp_traces_endpoint: str | None = None
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: full URL for spans, wins over the base URL."""
    otlp_metrics_endpoint: str | None = None
    """OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: full URL for metrics, wins over the base URL."""
    service_name: str = "kanal-gateway"
    """OTEL_SERVICE_NAME."""
    tracer_provider: TracerProvider | None = None
    """A tracer provider to use instead of building one from the settings above (tests
    pass one with an in-memory exporter); the gateway does not shut it down."""

    def otlp_url(self, signal: Literal["traces", "metrics"]) -> str | None:
        """Where OTLP/HTTP sends ``signal``: its own endpoint, else the base endpoint plus
        ``/v1/<signal>``, else None (the exporter's default)."""
        own = self.otlp_traces_endpoint if signal == "traces" else self.otlp_metrics_endpoint
        if own:
            return own
        return f"{self.otlp_endpoint.rstrip('/')}/v1/{signal}" if self.otlp_endpoint else None


def otel_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """GatewaySettings fields from the standard OpenTelemetry variables (ValueError for a
    value the gateway does not support). ``OTEL_SDK_DISABLED=true`` turns both off;
    ``OTEL_METRICS_EXPORTER=prometheus`` means what ``/metrics`` always does."""

    def exporter(name: str, allowed: tuple[str, ...]) -> str:
        value = environ.get(name, "").strip().lower() or "none"
        if value == "prometheus" and name == "OTEL_METRICS_EXPORTER":
            value = "none"
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        return value

    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return {
        "traces_exporter": "none"
        if disabled
        else exporter("OTEL_TRACES_EXPORTER", ("none", "otlp", "console")),
        "metrics_exporter": "none"
        if disabled
        else exporter("OTEL_METRICS_EXPORTER", ("none", "otlp")),
        "otlp_endpoint": environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        "otlp_traces_endpoint": environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None,
        "otlp_metrics_endpoint": environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or None,
        "service_name": environ.get("OTEL_SERVICE_NAME") or "kanal-gateway",
    }
