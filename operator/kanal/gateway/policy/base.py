"""The policy pipeline: what runs around every upstream call.

A :class:`Policy` sees a :class:`Call` before routing (it may refuse it with a
GatewayError, rewrite ``call.body``, add response headers, or answer it outright as the
cache does) and the :class:`Outcome` after it — always, also on errors, upstream failures,
cached answers and callers that went away, so reservations are settled and nothing leaks.

Order (``before`` in this order, ``after`` in reverse, only for policies whose ``before``
ran): guardrails -> context -> cache -> limits -> budget -> [upstream].
A policy that a route does not enable is not in that route's chain at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from kanal.snapshot import RouteConfig

if TYPE_CHECKING:
    from kanal.gateway.errors import GatewayError
    from kanal.gateway.service import Gateway
    from kanal.gateway.stores import Stores

Json = dict[str, Any]
OperationName = Literal["chat", "completion", "embeddings"]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller; its namespace is its tenant."""

    tenant: str
    key: str | None = None
    """Name of the API key Secret that admitted it (never the key itself)."""
    key_labels: tuple[tuple[str, str], ...] = ()
    """Labels of that Secret, for access.apiKeySecretSelector."""
    service_account: str | None = None
    """namespace/name when a ServiceAccount token admitted it."""

    @property
    def id(self) -> str:
        """Stable identity for per-key limits and usage: never a secret."""
        if self.service_account:
            return f"sa:{self.service_account}"
        if self.key:
            return f"key:{self.tenant}/{self.key}"
        return f"anonymous:{self.tenant}"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    source: Literal["provider", "estimated"] = "provider"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Call:
    """One request on its way through the pipeline."""

    op: OperationName
    caller: Caller
    route: RouteConfig
    body: Json
    """The body that goes upstream; policies may rewrite it (context, redaction)."""
    request_id: str
    session_id: str | None = None
    stream: bool = False
    cache_bypass: bool = False
    """The caller asked not to be answered from the cache."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (x-ratelimit-*, x-kanal-redacted, x-kanal-cache...)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space, one key per policy name."""
    estimated_prompt_tokens: int = 0
    """Filled before the policies run (a cheap offline estimate, for reservations)."""
    max_output_tokens: int = 0
    """Upper bound of the answer: max_tokens, else the model's limit (for reservations)."""
    outcome: Outcome | None = None
    """What came of it, once it ran (read by telemetry at the request's end)."""


@dataclass(slots=True)
class Outcome:
    """What came of a call, for the ``after`` hooks."""

    response: Json | None = None
    """The full answer (for streams: assembled from the chunks) when there is one."""
    text: str = ""
    """The assistant's text (chat and completions), streamed or not."""
    usage: Usage | None = None
    """Provider-reported usage, else an estimate of what was produced."""
    error: GatewayError | None = None
    completed: bool = False
    """True when the answer reached its normal end (a stream cut short is not completed)."""
    cached: bool = False
    """Answered by the cache, no upstream call."""
    backend: str | None = None
    model: str | None = None
    """Upstream model that answered."""
    finish_reason: str | None = None
    """Why the answer ended (stop, length, tool_calls...), streamed or not."""


class Policy:
    """Base class; subclasses override what they need."""

    name: ClassVar[str] = "policy"

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.gateway: Gateway | None = None

    def bind(self, gateway: Gateway) -> None:
        """Called once by the Gateway that owns the policy (for policies that call models)."""
        self.gateway = gateway

    def enabled(self, route: RouteConfig) -> bool:
        """Whether this route's chain includes the policy (decided once per snapshot)."""
        return False

    async def before(self, call: Call) -> Json | None:
        """Refuse (raise GatewayError), rewrite, or answer (return a full response)."""
        return None

    async def after(self, call: Call, outcome: Outcome) -> None:
        """Settle, store, append. Runs for every call whose ``before`` ran."""

    async def close(self) -> None:
        """Release what the policy holds (background tasks, connections)."""
