"""ModelBackend: where a model lives and how to reach it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kanal.api._base import DNS_LABEL, Duration, KanalModel, Quantity, Rule
from kanal.api.common import CONDITIONS_LIST, Condition, SecretKeyRef

Provider = Literal["openai", "openai-compatible", "anthropic", "azure-openai", "gemini", "mock"]
HOSTED_PROVIDERS = ("openai", "anthropic", "azure-openai", "gemini")


class Pricing(KanalModel):
    """Prices in US dollars per million tokens, used for cost accounting and budgets."""

    input_per_m_tok: float = Field(default=0.0, ge=0, alias="inputPerMTok")
    """USD per million input (prompt) tokens."""
    output_per_m_tok: float = Field(default=0.0, ge=0, alias="outputPerMTok")
    """USD per million output (completion) tokens."""


class ModelSpec(KanalModel):
    """One upstream model served by this backend."""

    name: str = Field(min_length=1, max_length=256)
    """Upstream model name, exactly as the provider spells it (e.g. gpt-4o-mini)."""
    context_window: int = Field(ge=1, le=100_000_000)
    """Maximum tokens of prompt plus completion the model accepts."""
    max_output_tokens: int | None = Field(default=None, ge=1, le=100_000_000)
    """Largest completion the model produces; caps reservations without max_tokens."""
    pricing: Pricing | None = None
    """Prices per million tokens; absent means free (e.g. a self-hosted model)."""


class Limits(KanalModel):
    """Protection for the upstream: the gateway never sends it more than this."""

    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute across all routes using this backend."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens (input plus output) per minute across all routes using this backend."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Requests in flight at once, per gateway replica."""


class Timeouts(KanalModel):
    """Upstream timeouts."""

    connect: Duration = "5s"
    """Time to establish a connection to the upstream."""
    request: Duration = "300s"
    """Time for a whole upstream request (for streams, until the last chunk)."""


class EnvVarSource(KanalModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeyRef
    """A key of a Secret in the backend's namespace."""


class EnvVar(KanalModel):
    """An environment variable of the serving container."""

    rules = (
        Rule(
            cel="has(self.value) != has(self.valueFrom)",
            message="an env entry sets exactly one of value or valueFrom",
            check=lambda e: (e.value is None) != (e.value_from is None),
        ),
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Value read from a Secret."""


class ResourceRequirements(KanalModel):
    """Compute resources of the serving container, as in a Kubernetes container spec.

    GPUs are extended resources, e.g. ``limits: {nvidia.com/gpu: 1}``."""

    limits: dict[str, Quantity] | None = None
    """Maximum resources; for GPUs the count requested."""
    requests: dict[str, Quantity] | None = None
    """Minimum resources the scheduler reserves."""


class Scale(KanalModel):
    """Autoscaling of the Knative Service (the knative autoscaling annotations)."""

    rules = (
        Rule(
            cel="!has(self.max) || self.min <= self.max",
            message="serving.scale.min must not exceed serving.scale.max",
            check=lambda s: s.max is None or s.min <= s.max,
            field_path=".min",
        ),
        Rule(
            cel="!has(self.max) || !has(self.initial) || self.initial <= self.max",
            message="serving.scale.initial must not exceed serving.scale.max",
            check=lambda s: s.max is None or s.initial is None or s.initial <= s.max,
            field_path=".initial",
        ),
    )

    min: int = Field(default=0, ge=0, le=1000)
    """Minimum replicas. 0 scales to zero when idle; 1 or more keeps replicas warm
    (the equivalent of provisioned concurrency)."""
    max: int | None = Field(default=None, ge=1, le=1000)
    """Maximum replicas; absent means no upper bound."""
    target: int | None = Field(default=None, ge=1, le=100_000)
    """Target per replica for the chosen metric (concurrent requests, or requests per second)."""
    metric: Literal["concurrency", "rps"] = "concurrency"
    """What the autoscaler measures."""
    initial: int | None = Field(default=None, ge=0, le=1000)
    """Replicas started when a revision is created."""
    scale_down_delay: Duration | None = None
    """How long load must stay low before scaling down (Knative scale-down-delay)."""


class TrafficTarget(KanalModel):
    """A share of traffic for a revision, with Knative's own field names."""

    rules = (
        Rule(
            cel="has(self.revisionName) != (has(self.latestRevision) && self.latestRevision)",
            message="a traffic entry names exactly one of revisionName or latestRevision: true",
            check=lambda t: (t.revision_name is not None) != bool(t.latest_revision),
        ),
    )

    revision_name: str | None = Field(default=None, max_length=253, pattern=DNS_LABEL)
    """A fixed revision, e.g. the previous one during a canary."""
    latest_revision: bool | None = None
    """True to follow the latest ready revision."""
    percent: int = Field(ge=0, le=100)
    """Share of traffic in percent; all entries add up to 100."""
    tag: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    """Gives this target its own URL (tag-<service>...), for blue-green tests."""


class Serving(KanalModel):
    """Run the model in the cluster as a Knative Service that speaks the OpenAI API."""

    rules = (
        Rule(
            cel="!has(self.traffic) || size(self.traffic) == 0 || "
            "self.traffic.map(t, t.percent).sum() == 100",
            message="serving.traffic percents must add up to 100",
            check=lambda s: not s.traffic or sum(t.percent for t in s.traffic) == 100,
            field_path=".traffic",
        ),
    )

    image: str = Field(min_length=1, max_length=1024)
    """Container image of the model server (e.g. a vLLM or llama.cpp image)."""
    args: list[str] | None = Field(default=None, max_length=64)
    """Arguments to the container entrypoint."""
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Environment variables of the container."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the model server listens on."""
    resources: ResourceRequirements | None = None
    """CPU, memory and GPU for the container."""
    scale: Scale | None = None
    """Autoscaling; absent means Knative's defaults (scale to zero)."""
    container_concurrency: int | None = Field(default=None, ge=0, le=1000)
    """Hard limit of requests in flight per replica; 0 means unlimited."""
    timeout_seconds: int | None = Field(default=None, ge=1, le=3600)
    """Longest time a request may take. Knative's cluster maximum (600 by default) must allow it."""
    traffic: list[TrafficTarget] | None = Field(default=None, max_length=10)
    """Traffic split between revisions for canary and blue-green rollouts; absent sends all
    traffic to the latest revision."""


class Credentials(KanalModel):
    """Where the upstream API key lives; never inline. Rotate by editing the Secret."""

    secret_ref: SecretKeyRef
    """The Secret and key that hold the API key."""


class ModelBackendSpec(KanalModel):
    """Desired state of a ModelBackend."""

    rules = (
        Rule(
            cel="self.provider == 'mock' ? (!has(self.endpoint) && !has(self.serving)) "
            ": (has(self.endpoint) != has(self.serving))",
            message="set exactly one of spec.endpoint or spec.serving "
            "(provider mock takes neither)",
            check=lambda s: (
                s.endpoint is None and s.serving is None
                if s.provider == "mock"
                else (s.endpoint is None) != (s.serving is None)
            ),
        ),
        Rule(
            cel="!has(self.serving) || self.provider == 'openai-compatible'",
            message="spec.serving runs an OpenAI-compatible model server in the cluster: "
            "it needs provider openai-compatible",
            check=lambda s: s.serving is None or s.provider == "openai-compatible",
            field_path=".provider",
        ),
        Rule(
            cel="!(self.provider in ['openai', 'anthropic', 'azure-openai', 'gemini']) "
            "|| has(self.credentials)",
            message="hosted providers (openai, anthropic, azure-openai, gemini) need "
            "spec.credentials.secretRef naming the Secret that holds the API key",
            check=lambda s: s.provider not in HOSTED_PROVIDERS or s.credentials is not None,
        ),
    )

    provider: Provider
    """API the upstream speaks: openai, openai-compatible (vLLM, llama.cpp, Ollama, TGI...),
    anthropic, azure-openai, gemini, or mock (deterministic, for demos and tests)."""
    endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s]+$")
    """Base URL of the upstream API, e.g. https://api.openai.com/v1."""
    serving: Serving | None = None
    """Run the model in the cluster as a Knative Service instead of calling an endpoint."""
    api_version: str | None = Field(default=None, max_length=64)
    """Provider API version where the provider wants one (azure-openai api-version,
    anthropic-version); the adapter's default when absent."""
    credentials: Credentials | None = None
    """The API key, by reference to a Secret."""
    models: list[ModelSpec] = Field(
        min_length=1,
        max_length=100,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Models this backend serves, with context windows and prices."""
    limits: Limits | None = None
    """Upstream protection: requests and tokens per minute, concurrency."""
    timeouts: Timeouts | None = None
    """Connect and request timeouts."""


class ModelBackendStatus(KanalModel):
    """Observed state of a ModelBackend, written by the operator."""

    conditions: list[Condition] | None = Field(
        default=None, max_length=16, json_schema_extra=CONDITIONS_LIST
    )
    """Ready, Reconciled and ServingReady, each with reason and message."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the operator last acted on."""
    url: str | None = None
    """Resolved endpoint the gateway calls."""
    models: list[str] | None = None
    """Upstream model names available on this backend."""
