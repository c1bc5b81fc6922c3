"""LlmRoute: the model name callers ask for and the policy applied to it."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator

from kanal.api._base import DNS_LABEL, Duration, KanalModel, Rule
from kanal.api.common import CONDITIONS_LIST, BackendRef, Condition


class RouteBackend(KanalModel):
    """One upstream for this route: a backend and the model to ask it for."""

    backend_ref: BackendRef
    """The ModelBackend to call."""
    model: str = Field(min_length=1, max_length=256)
    """Upstream model name on that backend (one of its spec.models)."""
    weight: int = Field(default=1, ge=0, le=10_000)
    """Relative share of traffic within its priority tier; 0 takes none while others serve."""
    priority: int = Field(default=0, ge=0, le=10)
    """Tier: lower tiers are tried first; higher tiers are fallbacks."""


def _ref_key(b: RouteBackend) -> tuple[str | None, str, str]:
    return (b.backend_ref.namespace, b.backend_ref.name, b.model)


SERVICE_ACCOUNT = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

RetryOn = Literal["5xx", "timeout", "rate-limited", "connect-error"]


class Retry(KanalModel):
    """Retries and fallback on upstream failures."""

    attempts: int = Field(default=2, ge=0, le=10)
    """Extra attempts after the first one within a priority tier; when a tier is used up
    (or all its backends are cooling down) the next tier is tried."""
    backoff: Duration = "200ms"
    """Base delay before a retry; grows exponentially, with jitter."""
    on: list[RetryOn] = Field(
        default=list(get_args(RetryOn)),  # a plain default, so the CRD carries it too
        max_length=4,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Failures that trigger a retry or a fallback to the next tier."""


class RateLimit(KanalModel):
    """Sliding-window limits, exact across gateway replicas (counted in Redis)."""

    rules = (
        Rule(
            cel="has(self.requestsPerMinute) || has(self.tokensPerMinute)",
            message="rateLimit needs requestsPerMinute, tokensPerMinute or both",
            check=lambda r: r.requests_per_minute is not None or r.tokens_per_minute is not None,
        ),
    )

    requests_per_minute: int | None = Field(default=None, ge=1)
    """Requests admitted per minute."""
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Input plus output tokens admitted per minute."""
    per: Literal["key", "namespace", "route"] = "key"
    """Who shares one counter: each API key or ServiceAccount, each namespace, or the route."""


class Budget(KanalModel):
    """Spending caps in US dollars, priced from the backends' model prices."""

    rules = (
        Rule(
            cel="has(self.usdPerDay) || has(self.usdPerMonth)",
            message="budget needs usdPerDay, usdPerMonth or both",
            check=lambda b: b.usd_per_day is not None or b.usd_per_month is not None,
        ),
    )

    usd_per_day: float | None = Field(default=None, gt=0)
    """Cap per UTC day."""
    usd_per_month: float | None = Field(default=None, gt=0)
    """Cap per UTC calendar month."""


class Cache(KanalModel):
    """Exact-match response cache in Redis."""

    enabled: bool = True
    """Serve identical requests from the cache."""
    ttl: Duration = "1h"
    """How long a cached response is served."""


class Summarizer(KanalModel):
    """The model that folds old turns into a running summary."""

    backend_ref: BackendRef
    """The ModelBackend to call."""
    model: str = Field(min_length=1, max_length=256)
    """Upstream model name on that backend."""


class Context(KanalModel):
    """Conversation memory: callers send X-Session-Id and the gateway keeps the history."""

    rules = (
        Rule(
            cel="self.strategy != 'summarize' || has(self.summarizer)",
            message="context.strategy summarize needs context.summarizer (backendRef and model)",
            check=lambda c: c.strategy != "summarize" or c.summarizer is not None,
            field_path=".summarizer",
        ),
    )

    enabled: bool = True
    """Keep conversation history per session."""
    max_tokens: int = Field(default=4000, ge=1, le=10_000_000)
    """Token budget of history sent upstream (system prompt and summary included)."""
    ttl: Duration = "24h"
    """Idle time after which a session expires; each turn refreshes it."""
    strategy: Literal["window", "summarize"] = "window"
    """window keeps the newest turns that fit; summarize also folds older turns into a summary."""
    summarizer: Summarizer | None = None
    """Model used by strategy summarize."""


class PromptVariable(KanalModel):
    """A named variable of a prompt template."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Variable name, used as {{name}} in the template."""
    description: str | None = Field(default=None, max_length=1024)
    """What the caller should put here."""
    default: str | None = Field(default=None, max_length=65536)
    """Value used when the caller omits the variable; absent makes the variable required."""


class Expose(KanalModel):
    """How the prompt is published."""

    function: bool = False
    """Serve the prompt as its own REST API (a Knative function, POST / with JSON variables)."""


class Prompt(KanalModel):
    """Prompt encapsulation: a system prompt and a template with named variables."""

    rules = (
        Rule(
            cel="!has(self.expose) || !self.expose.function || has(self.template)",
            message="prompt.expose.function needs prompt.template: the function renders it",
            check=lambda p: p.expose is None or not p.expose.function or p.template is not None,
            field_path=".template",
        ),
    )

    system: str | None = Field(default=None, max_length=65536)
    """System prompt put before every conversation on this route."""
    template: str | None = Field(default=None, max_length=65536)
    """User message template with {{variable}} placeholders."""
    variables: list[PromptVariable] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Variables the template uses."""
    expose: Expose | None = None
    """Publish the prompt as a function."""

    @property
    def published(self) -> bool:
        """``expose.function`` is true: the prompt is served as a function."""
        return self.expose is not None and bool(self.expose.function)


RedactClass = Literal["email", "phone", "credit-card", "ssn", "ip-address", "iban"]


class Guardrails(KanalModel):
    """Checks and rewrites applied to input before any upstream call."""

    redact: list[RedactClass] | None = Field(
        default=None, max_length=6, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """PII classes replaced by a placeholder before the upstream sees them."""
    block: list[str] | None = Field(default=None, max_length=64)
    """Regular expressions; input matching any is refused with 400 naming the pattern."""
    max_input_tokens: int | None = Field(default=None, ge=1)
    """Input larger than this is refused with 400 before any upstream call."""

    @field_validator("block")
    @classmethod
    def _patterns_compile(cls, patterns: list[str] | None) -> list[str] | None:
        for index, pattern in enumerate(patterns or []):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"guardrails.block[{index}] is not a valid regex: {err}") from err
        return patterns


class LabelSelector(KanalModel):
    """Selects objects by labels."""

    match_labels: dict[str, str] | None = None
    """Labels an object must carry, all of them."""


class Access(KanalModel):
    """Who may call this route; absent admits every authenticated caller of the namespace."""

    namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]] | None = Field(
        default=None, max_length=256
    )
    """Caller namespaces (tenants) admitted, besides the route's own."""
    service_accounts: (
        list[Annotated[str, Field(max_length=317, pattern=SERVICE_ACCOUNT)]] | None
    ) = Field(default=None, max_length=256)
    """ServiceAccounts admitted, as namespace/name."""
    api_key_secret_selector: LabelSelector | None = None
    """API key Secrets admitted, by label."""


class RequestLogging(KanalModel):
    """What the request log (one JSON line per request) records; never secrets."""

    content: bool = False
    """Log the prompt as sent upstream (redacted by guardrails) and the answer text."""


class LlmRouteSpec(KanalModel):
    """Desired state of an LlmRoute."""

    rules = (
        Rule(
            cel="self.backends.all(b, self.backends.exists(c, "
            "c.priority == b.priority && c.weight > 0))",
            message="spec.backends: every priority tier needs a backend with weight > 0",
            check=lambda s: all(
                any(c.priority == b.priority and c.weight > 0 for c in s.backends)
                for b in s.backends
            ),
            field_path=".backends",
        ),
        Rule(
            # object equality keeps the CEL cost low; a ternary on the optional namespace
            # inside the loop pushes the estimate past the API server's budget
            cel="self.backends.all(b, self.backends.exists_one(c, "
            "c.backendRef == b.backendRef && c.model == b.model))",
            message="spec.backends lists the same backendRef and model twice",
            check=lambda s: len({_ref_key(b) for b in s.backends}) == len(s.backends),
            field_path=".backends",
        ),
    )

    model: str | None = Field(default=None, min_length=1, max_length=256)
    """Public model name callers send; defaults to metadata.name."""
    backends: list[RouteBackend] = Field(min_length=1, max_length=16)
    """Upstreams: weighted within a priority tier, higher tiers as fallbacks."""
    retry: Retry | None = None
    """Retries and fallback on upstream failure."""
    timeout: Duration | None = None
    """Deadline for the whole request, retries included (for streams, until the last chunk)."""
    rate_limit: RateLimit | None = None
    """Requests and tokens per minute."""
    budget: Budget | None = None
    """Spending caps in US dollars."""
    cache: Cache | None = None
    """Exact-match response cache."""
    context: Context | None = None
    """Conversation memory keyed by X-Session-Id."""
    prompt: Prompt | None = None
    """System prompt, template and publication as a function."""
    guardrails: Guardrails | None = None
    """Redaction, blocked patterns and input size caps."""
    access: Access | None = None
    """Who may call this route."""
    logging: RequestLogging | None = None
    """The request log: whether prompts and answers are logged (they are not by default)."""


class ResolvedBackend(KanalModel):
    """A backend of the route as the operator resolved it."""

    name: str
    """ModelBackend name."""
    namespace: str
    """ModelBackend namespace."""
    model: str
    """Upstream model."""
    ready: bool = False
    """Whether the backend is Ready."""


class LlmRouteStatus(KanalModel):
    """Observed state of an LlmRoute, written by the operator."""

    conditions: list[Condition] | None = Field(
        default=None, max_length=16, json_schema_extra=CONDITIONS_LIST
    )
    """Ready, BackendsResolved and FunctionReady, each with reason and message."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the operator last acted on."""
    backends: list[ResolvedBackend] | None = None
    """Backends as resolved."""
    function_url: str | None = None
    """URL of the prompt function, when prompt.expose.function is true."""
