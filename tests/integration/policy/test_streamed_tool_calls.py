"""Streamed answers that end in tool calls are assembled whole, so context stores the call
and the cache replays it (with the stream index the SDK's accumulators need)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from fakes import FakeOpenAI, Fault, ToolCall
from gwkit import snapshot_from_yaml, threaded_gateway


def objects(url: str, policy: str) -> str:
    return f"""
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: fake}}
spec:
  provider: openai-compatible
  endpoint: {url}
  models: [{{name: m, contextWindow: 8192}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat}}
spec:
  backends: [{{backendRef: {{name: fake}}, model: m}}]
  {policy}
"""


ASK = [{"role": "user", "content": "what is kanal?"}]
TOOL = [ToolCall("lookup", {"q": "kanal"}, id="call_7")]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI().serve_in_thread() as running:
        yield running


def streamed_calls(client: openai.OpenAI, **extra: object) -> list[tuple[int, str, str, str]]:
    stream = client.chat.completions.create(model="chat", messages=ASK, stream=True, **extra)
    pieces: dict[int, list[str]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                entry = pieces.setdefault(call.index, ["", "", ""])
                entry[0] = call.id or entry[0]
                entry[1] = (call.function.name if call.function else None) or entry[1]
                entry[2] += (call.function.arguments if call.function else None) or ""
    return [(i, *pieces[i]) for i in sorted(pieces)]  # type: ignore[misc]


def test_context_stores_a_streamed_tool_call(fake: FakeOpenAI) -> None:
    fake.script(Fault.ok("", tool_calls=TOOL))
    text = objects(fake.url, "context: {enabled: true, maxTokens: 2000}")
    with threaded_gateway(snapshot_from_yaml(text)) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        calls = streamed_calls(client, extra_headers={"X-Session-Id": "s1"})
        assert calls == [(0, "call_7", "lookup", '{"q":"kanal"}')]
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "tool", "tool_call_id": "call_7", "content": "a gateway"}],
            extra_headers={"X-Session-Id": "s1"},
        )
    upstream = fake.requests[-1].body["messages"]
    assert [m["role"] for m in upstream] == ["user", "assistant", "tool"]
    assert upstream[1]["tool_calls"][0]["id"] == "call_7"
    assert upstream[1]["tool_calls"][0]["function"]["arguments"] == '{"q":"kanal"}'


def test_cache_replays_a_streamed_tool_call(fake: FakeOpenAI) -> None:
    fake.script(Fault.ok("", tool_calls=TOOL))
    text = objects(fake.url, "cache: {enabled: true, ttl: 1m}")
    with threaded_gateway(snapshot_from_yaml(text)) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        first = streamed_calls(client)
        second = streamed_calls(client)
    assert first == second == [(0, "call_7", "lookup", '{"q":"kanal"}')]
    assert len(fake.requests) == 1  # the second answer came from the cache
