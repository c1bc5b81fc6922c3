"""The adapter contract: OpenAI's chat format in, each provider's wire format out and back.

The gateway speaks one request format everywhere — the OpenAI Chat Completions /
Completions / Embeddings JSON bodies, as plain dicts. An adapter turns such a body into
its provider's request, sends it with the backend's pooled ``aiohttp.ClientSession`` and
turns the answer (or each streamed event) back into OpenAI's response shapes, so callers
never change code when a route switches provider.
"""

from __future__ import annotations

import abc
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import aiohttp

Json = dict[str, Any]


class FailureKind(StrEnum):
    """How an upstream call failed; the route's ``retry.on`` names the first four."""

    SERVER = "5xx"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate-limited"
    CONNECT = "connect-error"
    CLIENT = "4xx"
    """The upstream refused the request itself (400, 404, 413, 422): not retried, relayed."""
    AUTH = "auth"
    """The upstream refused the backend's credentials (401, 403): the operator's problem."""
    PROTOCOL = "protocol"
    """Malformed JSON or SSE from the upstream; retried like a 5xx."""


class UpstreamError(Exception):
    """An upstream call failed. Never carries credentials or request headers."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind.value}, status={self.status}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One backend as an adapter needs it; built once per snapshot, not per request."""

    backend_id: str
    """namespace/name of the ModelBackend, for messages."""
    base_url: str
    """Provider base URL without a trailing slash (e.g. https://api.openai.com/v1)."""
    session: aiohttp.ClientSession
    """Pooled connections to this backend, shared by all requests."""
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    connect_timeout: float = 5.0
    propagate_trace: bool = False
    """Send the current trace context upstream as ``traceparent`` (tracing is on)."""


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-request limits."""

    timeout: float
    """Seconds left for the whole call (for streams: until the last chunk)."""
    idle_timeout: float | None = None
    """Longest silence allowed between two streamed chunks."""


class ProviderAdapter(abc.ABC):
    """Translate OpenAI-shaped requests to one provider and back.

    ``body`` always has ``model`` set to the upstream model name. Non-streaming methods
    return OpenAI response dicts including ``usage`` as the provider reported it.
    Streaming methods yield OpenAI ``chat.completion.chunk`` (or ``text_completion``)
    dicts; when the provider reports usage, the last item is a chunk with
    ``choices: []`` and ``usage`` — adapters always ask the provider for usage.
    Every failure is raised as :class:`UpstreamError`.
    """

    provider: ClassVar[str]

    @abc.abstractmethod
    async def chat(self, up: Upstream, body: Json, opts: CallOptions) -> Json: ...

    @abc.abstractmethod
    def chat_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]: ...

    async def completion(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        raise UpstreamError(
            FailureKind.CLIENT, f"provider {self.provider} has no text completions", status=400
        )

    def completion_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]:
        raise UpstreamError(
            FailureKind.CLIENT, f"provider {self.provider} has no text completions", status=400
        )

    async def embeddings(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        raise UpstreamError(
            FailureKind.CLIENT, f"provider {self.provider} has no embeddings", status=400
        )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or retry-after-ms."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def failure_for_status(status: int) -> FailureKind:
    """The failure kind of an upstream HTTP status (>= 400)."""
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status in (408, 504):
        return FailureKind.TIMEOUT
    if status >= 500:
        return FailureKind.SERVER
    if status in (401, 403):
        return FailureKind.AUTH
    return FailureKind.CLIENT
