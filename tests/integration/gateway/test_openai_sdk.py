"""The official openai SDK against a running gateway: sync, async, streaming, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from gwkit import MOCK_YAML, ThreadedGateway, snapshot_from_yaml, threaded_gateway

KEYS_YAML = """
---
apiVersion: v1
kind: Secret
metadata:
  name: team-a-key
  namespace: default
  labels: {kanal.dev/api-key: "true"}
stringData: {key: sk-kanal-test-123}
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[ThreadedGateway]:
    with threaded_gateway(snapshot_from_yaml(MOCK_YAML)) as running:
        yield running


@pytest.fixture
def client(gw: ThreadedGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}]
    )
    assert reply.choices[0].message.role == "assistant"
    assert "hello there" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_completion_raw_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Request-Id": "my-trace-42"},
    )
    assert raw.headers["x-request-id"] == "my-trace-42"
    assert float(raw.headers["x-kanal-overhead-ms"]) >= 0
    assert raw.headers["x-kanal-backend"] == "default/mock"


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "count these words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "count these words please" in text
    assert len([c for c in chunks if c.choices]) > 3  # relayed piece by piece
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens > 0


def test_streaming_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_async_client(gw: ThreadedGateway) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        async with client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": f"question {i}"}]
                    )
                    for i in range(10)
                )
            )
            stream = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "streamed"}], stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        return [r.choices[0].message.content or "" for r in replies] + [streamed]

    texts = asyncio.run(run())
    for i in range(10):
        assert f"question {i}" in texts[i]
    assert "streamed" in texts[-1]


def test_completions_and_embeddings(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="chat", prompt="Say hi", max_tokens=20)
    assert completion.choices[0].text
    embedding = client.embeddings.create(model="chat", input=["one", "two"])
    assert len(embedding.data) == 2
    assert len(embedding.data[0].embedding) > 0
    assert embedding.data[0].embedding != embedding.data[1].embedding


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["chat"]
    assert client.models.retrieve("chat").owned_by == "default"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


def test_bad_request_names_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "robot", "content": "x"}],  # type: ignore[misc,list-item]
        )
    assert info.value.param == "messages[0].role"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], temperature=7
        )
    assert info.value.param == "temperature"  # type: ignore[attr-defined]


def test_api_keys_are_enforced() -> None:
    with threaded_gateway(snapshot_from_yaml(MOCK_YAML + KEYS_YAML)) as gw:
        good = openai.OpenAI(base_url=gw.base_url, api_key="sk-kanal-test-123", max_retries=0)
        assert good.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        ).choices
        bad = openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.code == "invalid_api_key"
        assert "sk-wrong" not in str(info.value)
