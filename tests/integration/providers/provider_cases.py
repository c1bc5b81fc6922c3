"""What the provider integration tests share: one case per network adapter and its fake."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

from fakes import FakeAnthropic, FakeGemini, FakeOpenAI, FakeUpstream, kanal_upstream
from kanal.gateway.providers import ADAPTERS, CallOptions, ProviderAdapter, Upstream, UpstreamError

Json = dict[str, Any]
KEY = "sk-test-0123456789-SECRET"
OPTS = CallOptions(timeout=5.0, idle_timeout=2.0)


@dataclass(frozen=True)
class Case:
    provider: str
    fake_class: type[FakeUpstream]
    auth_header: str
    auth_value: str

    @property
    def adapter(self) -> ProviderAdapter:
        return ADAPTERS[self.provider]

    def base_url(self, fake: FakeUpstream) -> str:
        if self.provider == "azure-openai":
            assert isinstance(fake, FakeOpenAI)
            return fake.azure_url
        return fake.url

    def __str__(self) -> str:
        return self.provider


CASES = [
    Case("openai", FakeOpenAI, "authorization", f"Bearer {KEY}"),
    Case("azure-openai", FakeOpenAI, "api-key", KEY),
    Case("anthropic", FakeAnthropic, "x-api-key", KEY),
    Case("gemini", FakeGemini, "x-goog-api-key", KEY),
]


def chat_body(model: str = "test-model", **extra: Any) -> Json:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "max_tokens": 50,
        **extra,
    }


@contextlib.asynccontextmanager
async def serve(
    case: Case, api_key: str | None = KEY
) -> AsyncIterator[tuple[FakeUpstream, Upstream]]:
    """The case's fake (requiring ``api_key``) and an Upstream pointing at it."""
    async with (
        case.fake_class(api_key=api_key) as fake,
        kanal_upstream(
            case.base_url(fake), api_key=api_key, backend_id=f"team-a/{case.provider}"
        ) as up,
    ):
        yield fake, up


async def collect(chunks: AsyncIterator[Json]) -> list[Json]:
    return [chunk async for chunk in chunks]


async def failure(call: Awaitable[Any]) -> UpstreamError:
    try:
        await call
    except UpstreamError as err:
        return err
    raise AssertionError("expected an UpstreamError")


async def stream_failure(chunks: AsyncIterator[Json]) -> tuple[list[Json], UpstreamError]:
    """The chunks received before the stream failed, and the failure."""
    received: list[Json] = []
    try:
        async for chunk in chunks:
            received.append(chunk)
    except UpstreamError as err:
        return received, err
    raise AssertionError(f"expected an UpstreamError after {len(received)} chunks")


def text_of(chunks: list[Json]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
