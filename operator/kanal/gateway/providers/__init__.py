"""Provider adapters, keyed by the ``ModelBackend.spec.provider`` names.

Adapters are stateless apart from small bounded caches of per-Upstream URLs and headers,
so one instance per provider serves every backend and request::

    adapter = ADAPTERS[backend.provider]
    answer = await adapter.chat(upstream, body, CallOptions(timeout=60))
    async with contextlib.aclosing(adapter.chat_stream(upstream, body, opts)) as chunks:
        async for chunk in chunks: ...

Streams do their network I/O lazily: errors (including ``CLIENT`` errors for requests a
provider cannot express) surface on the first ``__anext__``, so await the first chunk
before committing response headers.
"""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .azure import AzureOpenAIAdapter
from .base import (
    CallOptions,
    FailureKind,
    Json,
    ProviderAdapter,
    Upstream,
    UpstreamError,
    failure_for_status,
    parse_retry_after,
)
from .gemini import GeminiAdapter
from .mock import MockAdapter
from .openai import OpenAIAdapter, OpenAICompatibleAdapter

ADAPTERS: dict[str, ProviderAdapter] = {
    adapter.provider: adapter
    for adapter in (
        OpenAIAdapter(),
        OpenAICompatibleAdapter(),
        AzureOpenAIAdapter(),
        AnthropicAdapter(),
        GeminiAdapter(),
        MockAdapter(),
    )
}

__all__ = [
    "ADAPTERS",
    "AnthropicAdapter",
    "AzureOpenAIAdapter",
    "CallOptions",
    "FailureKind",
    "GeminiAdapter",
    "Json",
    "MockAdapter",
    "OpenAIAdapter",
    "OpenAICompatibleAdapter",
    "ProviderAdapter",
    "Upstream",
    "UpstreamError",
    "failure_for_status",
    "parse_retry_after",
]
