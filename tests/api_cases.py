"""Bad objects, one per schema or CEL rule, shared by the offline and the API-server tests.

Each case is a valid base object with one change. ``field`` is the path both the API
server and ``kanal validate`` must name; ``says`` is text both messages must contain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


def hosted_backend() -> Obj:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": "hosted"},
        "spec": {
            "provider": "openai",
            "endpoint": "https://api.openai.com/v1",
            "credentials": {"secretRef": {"name": "openai-key", "key": "apiKey"}},
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "contextWindow": 128000,
                    "pricing": {"inputPerMTok": 0.15, "outputPerMTok": 0.6},
                }
            ],
        },
    }


def served_backend() -> Obj:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": "served"},
        "spec": {
            "provider": "openai-compatible",
            "serving": {
                "image": "vllm/vllm-openai:v0.6.3",
                "scale": {"min": 0, "max": 2},
                "traffic": [
                    {"revisionName": "served-00001", "percent": 80},
                    {"latestRevision": True, "percent": 20, "tag": "canary"},
                ],
            },
            "models": [{"name": "llama3", "contextWindow": 8192}],
        },
    }


def route() -> Obj:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "LlmRoute",
        "metadata": {"name": "chat"},
        "spec": {
            "backends": [
                {"backendRef": {"name": "hosted"}, "model": "gpt-4o-mini", "weight": 3},
                {"backendRef": {"name": "served"}, "model": "llama3", "priority": 1},
            ]
        },
    }


@dataclass(frozen=True)
class BadCase:
    id: str
    base: Callable[[], Obj]
    change: Callable[[Obj], None]
    field: str
    says: str
    kind: str = "schema"  # or "cel": which mechanism of the API server refuses it

    def build(self) -> Obj:
        obj = copy.deepcopy(self.base())
        self.change(obj)
        return obj


def _set(path: str, value: Any) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        node = obj
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value

    return change


def _drop(path: str) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        node = obj
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[part]
        del node[parts[-1]]

    return change


def _both(*changes: Callable[[Obj], None]) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        for each in changes:
            each(obj)

    return change


CASES: list[BadCase] = [
    # --- ModelBackend: schema ---
    BadCase(
        "mb-unknown-provider",
        hosted_backend,
        _set("spec.provider", "openia"),
        "spec.provider",
        "openai-compatible",
    ),
    BadCase("mb-no-models", hosted_backend, _set("spec.models", []), "spec.models", "1"),
    BadCase(
        "mb-context-window-zero",
        hosted_backend,
        _set("spec.models.0.contextWindow", 0),
        "spec.models[0].contextWindow",
        "1",
    ),
    BadCase(
        "mb-negative-price",
        hosted_backend,
        _set("spec.models.0.pricing.inputPerMTok", -1),
        "spec.models[0].pricing.inputPerMTok",
        "0",
    ),
    BadCase(
        "mb-endpoint-not-url",
        hosted_backend,
        _set("spec.endpoint", "api.openai.com/v1"),
        "spec.endpoint",
        "http",
    ),
    BadCase(
        "mb-bad-duration",
        hosted_backend,
        _set("spec.timeouts", {"connect": "5 seconds"}),
        "spec.timeouts.connect",
        "ms|s|m|h",
    ),
    BadCase(
        "mb-port-out-of-range",
        served_backend,
        _set("spec.serving.port", 70000),
        "spec.serving.port",
        "65535",
    ),
    BadCase(
        "mb-unknown-field",
        hosted_backend,
        _set("spec.endpoints", "https://x"),
        "spec.endpoints",
        "unknown field",
    ),
    # --- ModelBackend: CEL ---
    BadCase(
        "mb-endpoint-and-serving",
        served_backend,
        _set("spec.endpoint", "http://x:8000/v1"),
        "spec",
        "exactly one of spec.endpoint or spec.serving",
        "cel",
    ),
    BadCase(
        "mb-neither-endpoint-nor-serving",
        hosted_backend,
        _drop("spec.endpoint"),
        "spec",
        "exactly one of spec.endpoint or spec.serving",
        "cel",
    ),
    BadCase(
        "mb-serving-needs-openai-compatible",
        served_backend,
        _both(
            _set("spec.provider", "openai"),
            _set("spec.credentials", {"secretRef": {"name": "k", "key": "apiKey"}}),
        ),
        "spec.provider",
        "needs provider openai-compatible",
        "cel",
    ),
    BadCase(
        "mb-hosted-needs-credentials",
        hosted_backend,
        _drop("spec.credentials"),
        "spec",
        "need spec.credentials.secretRef",
        "cel",
    ),
    BadCase(
        "mb-scale-min-over-max",
        served_backend,
        _set("spec.serving.scale", {"min": 3, "max": 2}),
        "spec.serving.scale.min",
        "must not exceed serving.scale.max",
        "cel",
    ),
    BadCase(
        "mb-scale-initial-over-max",
        served_backend,
        _set("spec.serving.scale", {"initial": 5, "max": 2}),
        "spec.serving.scale.initial",
        "must not exceed serving.scale.max",
        "cel",
    ),
    BadCase(
        "mb-traffic-not-100",
        served_backend,
        _set("spec.serving.traffic.1.percent", 10),
        "spec.serving.traffic",
        "add up to 100",
        "cel",
    ),
    BadCase(
        "mb-traffic-target-ambiguous",
        served_backend,
        _set("spec.serving.traffic.0.latestRevision", True),
        "spec.serving.traffic[0]",
        "exactly one of revisionName or latestRevision",
        "cel",
    ),
    BadCase(
        "mb-env-value-and-secret",
        served_backend,
        _set(
            "spec.serving.env",
            [
                {
                    "name": "HF_TOKEN",
                    "value": "x",
                    "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}},
                }
            ],
        ),
        "spec.serving.env[0]",
        "exactly one of value or valueFrom",
        "cel",
    ),
    # --- LlmRoute: schema ---
    BadCase("lr-no-backends", route, _set("spec.backends", []), "spec.backends", "1"),
    BadCase(
        "lr-negative-weight",
        route,
        _set("spec.backends.0.weight", -1),
        "spec.backends[0].weight",
        "0",
    ),
    BadCase(
        "lr-negative-priority",
        route,
        _set("spec.backends.1.priority", -1),
        "spec.backends[1].priority",
        "0",
    ),
    BadCase(
        "lr-retry-on-unknown",
        route,
        _set("spec.retry", {"on": ["500"]}),
        "spec.retry.on[0]",
        "rate-limited",
    ),
    BadCase(
        "lr-rate-limit-per-unknown",
        route,
        _set("spec.rateLimit", {"requestsPerMinute": 10, "per": "user"}),
        "spec.rateLimit.per",
        "namespace",
    ),
    BadCase(
        "lr-context-strategy-unknown",
        route,
        _set("spec.context", {"strategy": "forget"}),
        "spec.context.strategy",
        "summarize",
    ),
    BadCase(
        "lr-redact-unknown-class",
        route,
        _set("spec.guardrails", {"redact": ["passport"]}),
        "spec.guardrails.redact[0]",
        "credit-card",
    ),
    BadCase(
        "lr-service-account-not-qualified",
        route,
        _set("spec.access", {"serviceAccounts": ["builder"]}),
        "spec.access.serviceAccounts[0]",
        "[a-z0-9]",
    ),
    BadCase(
        "lr-budget-zero", route, _set("spec.budget", {"usdPerDay": 0}), "spec.budget.usdPerDay", "0"
    ),
    BadCase("lr-unknown-field", route, _set("spec.backend", []), "spec.backend", "unknown field"),
    BadCase(
        "lr-logging-unknown-field",
        route,
        _set("spec.logging", {"prompts": True}),
        "spec.logging.prompts",
        "unknown field",
    ),
    # --- LlmRoute: CEL ---
    BadCase(
        "lr-tier-without-weight",
        route,
        _set("spec.backends.0.weight", 0),
        "spec.backends",
        "every priority tier needs a backend with weight > 0",
        "cel",
    ),
    BadCase(
        "lr-duplicate-backend",
        route,
        _set("spec.backends.1", {"backendRef": {"name": "hosted"}, "model": "gpt-4o-mini"}),
        "spec.backends",
        "same backendRef and model twice",
        "cel",
    ),
    BadCase(
        "lr-rate-limit-empty",
        route,
        _set("spec.rateLimit", {"per": "route"}),
        "spec.rateLimit",
        "requestsPerMinute, tokensPerMinute or both",
        "cel",
    ),
    BadCase(
        "lr-budget-empty",
        route,
        _set("spec.budget", {}),
        "spec.budget",
        "usdPerDay, usdPerMonth or both",
        "cel",
    ),
    BadCase(
        "lr-summarize-without-summarizer",
        route,
        _set("spec.context", {"strategy": "summarize"}),
        "spec.context.summarizer",
        "needs context.summarizer",
        "cel",
    ),
    BadCase(
        "lr-function-without-template",
        route,
        _set("spec.prompt", {"system": "Be brief.", "expose": {"function": True}}),
        "spec.prompt.template",
        "needs prompt.template",
        "cel",
    ),
]
