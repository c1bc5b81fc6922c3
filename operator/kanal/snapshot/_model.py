"""The routing snapshot: everything the data plane needs, with no Kubernetes in it.

A snapshot is immutable and self-contained: the operator serves it to gateways and
persists it; ``kanal up`` builds it from files. Durations are already seconds and prices
already per token, so nothing is parsed on the request path.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, SecretStr

from kanal.api.llmroute import Access, Budget, Cache, Context, Guardrails, Prompt, RateLimit

SCHEMA_VERSION = 1

SortedSet = Annotated[frozenset[str], PlainSerializer(sorted, return_type=list[str])]
"""A set serialized in sorted order: a set's iteration order depends on the process's hash
seed, and the version (a hash of the JSON) must be the same in every process."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelInfo(_Frozen):
    """One upstream model of a backend."""

    name: str
    context_window: int
    max_output_tokens: int | None = None
    usd_per_input_token: float = 0.0
    usd_per_output_token: float = 0.0


class BackendConfig(_Frozen):
    """A resolved ModelBackend."""

    id: str
    """namespace/name."""
    provider: str
    base_url: str | None
    """None for the in-process mock provider."""
    api_key: SecretStr | None = None
    api_version: str | None = None
    models: dict[str, ModelInfo]
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 300.0


class Target(_Frozen):
    """One weighted upstream within a priority tier."""

    backend: str
    """BackendConfig.id."""
    model: str
    """Upstream model name."""
    weight: int


class Tier(_Frozen):
    """Targets of one priority, tried before the next tier."""

    priority: int
    targets: tuple[Target, ...]


class RetryPolicy(_Frozen):
    attempts: int = 2
    """Extra attempts after the first."""
    backoff: float = 0.2
    """Base delay in seconds; doubled per attempt, with jitter."""
    on: SortedSet = frozenset({"5xx", "timeout", "rate-limited", "connect-error"})


class RouteConfig(_Frozen):
    """A resolved LlmRoute."""

    id: str
    """namespace/name."""
    namespace: str
    model: str
    """Public model name callers send."""
    tiers: tuple[Tier, ...]
    retry: RetryPolicy = RetryPolicy()
    timeout: float = 600.0
    """Whole-request deadline in seconds, retries included."""
    tenants: SortedSet
    """Caller namespaces that may use this route (its own plus access.namespaces)."""
    rate_limit: RateLimit | None = None
    budget: Budget | None = None
    cache: Cache | None = None
    context: Context | None = None
    prompt: Prompt | None = None
    guardrails: Guardrails | None = None
    access: Access | None = None
    log_content: bool = False
    """LlmRoute.logging.content: the request log carries the prompt and the answer."""


class ApiKey(_Frozen):
    """A caller API key, kept only as a hash."""

    sha256: str
    namespace: str
    """The caller's tenant."""
    secret: str
    """Name of the Secret it came from (not the key)."""
    labels: dict[str, str] = Field(default_factory=dict)


class Problem(_Frozen):
    """Why an object was left out of the snapshot."""

    kind: str
    id: str
    reason: str
    message: str


class Snapshot(_Frozen):
    """One consistent routing configuration, identified by a content hash."""

    schema_version: int = SCHEMA_VERSION
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    api_keys: tuple[ApiKey, ...] = ()
    problems: tuple[Problem, ...] = ()

    @cached_property
    def version(self) -> str:
        """Content hash: the same inputs always give the same version."""
        payload = self.model_dump_json(exclude={"api_keys"}, context={"reveal": True})
        digest = hashlib.sha256(payload.encode())
        for key in self.api_keys:
            digest.update(key.sha256.encode())
        # secrets change the version too, without being part of any printable form
        for backend in self.backends.values():
            if backend.api_key is not None:
                digest.update(hashlib.sha256(backend.api_key.get_secret_value().encode()).digest())
        return digest.hexdigest()[:16]

    @cached_property
    def by_tenant_model(self) -> dict[tuple[str, str], RouteConfig]:
        """(caller namespace, public model) -> route: the one lookup on the request path."""
        index: dict[tuple[str, str], RouteConfig] = {}
        ordered = sorted(self.routes.values(), key=lambda r: r.id)
        for route in ordered:  # a tenant's own routes win over routes shared with it
            index.setdefault((route.namespace, route.model), route)
        for route in ordered:
            for tenant in route.tenants:
                index.setdefault((tenant, route.model), route)
        return index

    def models_for(self, tenant: str) -> list[RouteConfig]:
        """Routes a caller of ``tenant`` may use, sorted by public model name."""
        return sorted(
            (r for (t, _), r in self.by_tenant_model.items() if t == tenant), key=lambda r: r.model
        )
