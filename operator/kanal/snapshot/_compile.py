"""The compiler: API objects in, one validated routing snapshot out.

Pure and deterministic: the same objects always give the same snapshot (and version).
A route or backend that cannot be resolved is left out with a :class:`Problem` naming the
reason; everything else is unaffected.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable

from pydantic import SecretStr

from kanal.api import API_KEY_LABEL, LlmRoute, ModelBackend, Secret, parse_duration
from kanal.api.modelbackend import HOSTED_PROVIDERS
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

DEFAULT_NAMESPACE = "default"
DEFAULT_ROUTE_TIMEOUT = 600.0


class _Invalid(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _ns(namespace: str | None) -> str:
    return namespace or DEFAULT_NAMESPACE


def compile_snapshot(
    backends: Iterable[ModelBackend],
    routes: Iterable[LlmRoute],
    secrets: Iterable[Secret] = (),
) -> Snapshot:
    """Resolve references and precompute everything the request path needs."""
    secret_values = {(_ns(s.metadata.namespace), s.metadata.name): s for s in secrets}
    problems: list[Problem] = []

    compiled_backends: dict[str, BackendConfig] = {}
    for backend in sorted(backends, key=lambda b: (_ns(b.metadata.namespace), b.metadata.name)):
        backend_id = f"{_ns(backend.metadata.namespace)}/{backend.metadata.name}"
        try:
            compiled_backends[backend_id] = _compile_backend(backend_id, backend, secret_values)
        except _Invalid as err:
            problems.append(
                Problem(kind="ModelBackend", id=backend_id, reason=err.reason, message=err.message)
            )

    broken = {p.id: p for p in problems if p.kind == "ModelBackend"}
    compiled_routes: dict[str, RouteConfig] = {}
    claimed: dict[tuple[str, str], str] = {}
    for route in sorted(routes, key=lambda r: (_ns(r.metadata.namespace), r.metadata.name)):
        route_id = f"{_ns(route.metadata.namespace)}/{route.metadata.name}"
        try:
            compiled = _compile_route(route_id, route, compiled_backends, broken)
            owner = claimed.get((compiled.namespace, compiled.model))
            if owner is not None:
                raise _Invalid(
                    "ModelConflict",
                    f"model {compiled.model!r} is already served in namespace "
                    f"{compiled.namespace} by LlmRoute {owner}",
                )
        except _Invalid as err:
            problems.append(
                Problem(kind="LlmRoute", id=route_id, reason=err.reason, message=err.message)
            )
            continue
        claimed[(compiled.namespace, compiled.model)] = route_id
        compiled_routes[route_id] = compiled

    return Snapshot(
        backends=compiled_backends,
        routes=compiled_routes,
        api_keys=tuple(_api_keys(secret_values.values())),
        problems=tuple(problems),
    )


def _compile_backend(
    backend_id: str, backend: ModelBackend, secrets: dict[tuple[str, str], Secret]
) -> BackendConfig:
    spec = backend.spec
    namespace = _ns(backend.metadata.namespace)
    api_key: SecretStr | None = None
    if spec.credentials is not None:
        ref = spec.credentials.secret_ref
        secret = secrets.get((namespace, ref.name))
        if secret is None:
            raise _Invalid("SecretNotFound", f"Secret {namespace}/{ref.name} not found")
        value = secret.values().get(ref.key)
        if not value:
            raise _Invalid(
                "SecretKeyNotFound", f"Secret {namespace}/{ref.name} has no key {ref.key!r}"
            )
        api_key = SecretStr(value.strip())
    elif spec.provider in HOSTED_PROVIDERS:  # the CRD refuses this; files may still say it
        raise _Invalid("CredentialsMissing", f"provider {spec.provider} needs credentials")

    if spec.endpoint is not None:
        base_url: str | None = spec.endpoint.rstrip("/")
    elif spec.serving is not None:
        # A backend served in the cluster: the status URL once Knative has one, else the
        # cluster-local address of the Knative Service, which has the backend's name.
        status_url = backend.status.url if backend.status else None
        base_url = status_url or f"http://{backend.metadata.name}.{namespace}.svc.cluster.local"
        base_url = base_url.rstrip("/") + "/v1"
    else:
        base_url = None

    models = {
        m.name: ModelInfo(
            name=m.name,
            context_window=m.context_window,
            max_output_tokens=m.max_output_tokens,
            usd_per_input_token=(m.pricing.input_per_m_tok / 1e6) if m.pricing else 0.0,
            usd_per_output_token=(m.pricing.output_per_m_tok / 1e6) if m.pricing else 0.0,
        )
        for m in spec.models
    }
    timeouts = spec.timeouts
    return BackendConfig(
        id=backend_id,
        provider=spec.provider,
        base_url=base_url,
        api_key=api_key,
        api_version=spec.api_version,
        models=models,
        rpm=spec.limits.rpm if spec.limits else None,
        tpm=spec.limits.tpm if spec.limits else None,
        max_concurrency=spec.limits.max_concurrency if spec.limits else None,
        connect_timeout=parse_duration(timeouts.connect) if timeouts else 5.0,
        request_timeout=parse_duration(timeouts.request) if timeouts else 300.0,
    )


def _compile_route(
    route_id: str,
    route: LlmRoute,
    backends: dict[str, BackendConfig],
    broken: dict[str, Problem],
) -> RouteConfig:
    """``broken``: backend id -> why that backend was left out."""
    spec = route.spec
    namespace = _ns(route.metadata.namespace)
    tiers: dict[int, list[Target]] = defaultdict(list)
    for index, ref in enumerate(spec.backends):
        backend_id = f"{ref.backend_ref.namespace or namespace}/{ref.backend_ref.name}"
        backend = backends.get(backend_id)
        if backend is None:
            why = broken.get(backend_id)
            detail = f" ({why.reason}: {why.message})" if why else ""
            raise _Invalid(
                "BackendNotFound",
                f"spec.backends[{index}]: ModelBackend {backend_id} is not available{detail}",
            )
        if ref.model not in backend.models:
            known = ", ".join(sorted(backend.models))
            raise _Invalid(
                "ModelNotFound",
                f"spec.backends[{index}]: ModelBackend {backend_id} has no model "
                f"{ref.model!r} (it has: {known})",
            )
        tiers[ref.priority].append(Target(backend=backend_id, model=ref.model, weight=ref.weight))

    if spec.context is not None and spec.context.summarizer is not None:
        summarizer = spec.context.summarizer
        summarizer_id = (
            f"{summarizer.backend_ref.namespace or namespace}/{summarizer.backend_ref.name}"
        )
        if summarizer_id not in backends:
            raise _Invalid(
                "BackendNotFound",
                f"spec.context.summarizer: ModelBackend {summarizer_id} is not available",
            )

    retry = RetryPolicy()
    if spec.retry is not None:
        retry = RetryPolicy(
            attempts=spec.retry.attempts,
            backoff=parse_duration(spec.retry.backoff),
            on=frozenset(spec.retry.on),
        )
    access = spec.access
    return RouteConfig(
        id=route_id,
        namespace=namespace,
        model=spec.model or route.metadata.name,
        tiers=tuple(Tier(priority=p, targets=tuple(tiers[p])) for p in sorted(tiers)),
        retry=retry,
        timeout=parse_duration(spec.timeout) if spec.timeout else DEFAULT_ROUTE_TIMEOUT,
        tenants=frozenset({namespace, *(access.namespaces or [] if access else [])}),
        rate_limit=spec.rate_limit,
        budget=spec.budget,
        cache=spec.cache,
        context=spec.context,
        prompt=spec.prompt,
        guardrails=spec.guardrails,
        access=access,
        log_content=bool(spec.logging and spec.logging.content),
    )


def _api_keys(secrets: Iterable[Secret]) -> Iterable[ApiKey]:
    for secret in sorted(secrets, key=lambda s: (_ns(s.metadata.namespace), s.metadata.name)):
        labels = secret.metadata.labels or {}
        if labels.get(API_KEY_LABEL) != "true":
            continue
        key = secret.values().get("key")
        if not key:
            continue
        yield ApiKey(
            sha256=hash_api_key(key),
            namespace=_ns(secret.metadata.namespace),
            secret=secret.metadata.name,
            labels=dict(labels),
        )


def hash_api_key(key: str) -> str:
    """The form in which the gateway keeps an API key."""
    return hashlib.sha256(key.strip().encode()).hexdigest()
