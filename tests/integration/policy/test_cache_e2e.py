"""The response cache end to end: the official openai SDK (and gRPC) against a real gateway
whose backend is a FakeOpenAI, with the cache in memory and on the real Redis server.

The fake records every upstream request, so "answered from the cache" is proven by the
request count standing still."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest

from fakes import FakeOpenAI, Fault
from gwkit import ThreadedGateway, snapshot_from_yaml, threaded_gateway
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

KEY_A = "sk-kanal-cache-team-a-0001"
KEY_B = "sk-kanal-cache-team-b-0002"


def manifests(url: str) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: key-a, namespace: team-a, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: {KEY_A}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: key-b, namespace: team-b, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: {KEY_B}}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: fake, namespace: team-a}}
spec:
  provider: openai-compatible
  endpoint: {url}
  models: [{{name: m, contextWindow: 8192}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: fake}}, model: m}}]
  retry: {{attempts: 0}}
  cache: {{enabled: true, ttl: 1h}}
  access: {{namespaces: [team-b]}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: short, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: fake}}, model: m}}]
  retry: {{attempts: 0}}
  cache: {{enabled: true, ttl: 400ms}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: uncached, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: fake}}, model: m}}]
  cache: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI().serve_in_thread() as server:
        yield server


@pytest.fixture(scope="module", params=["memory", "redis"])
def gw(request: pytest.FixtureRequest, fake: FakeOpenAI) -> Iterator[ThreadedGateway]:
    redis_url = request.getfixturevalue("redis_server") if request.param == "redis" else None
    with threaded_gateway(
        snapshot_from_yaml(manifests(fake.url)),
        redis_url=redis_url,
        cooldown_after_failures=1000,  # faults on purpose must not bench the backend
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(fake: FakeOpenAI) -> None:
    fake.clear()


@pytest.fixture
def prompt() -> str:
    """A question no other test asks (the module's gateway and Redis are shared)."""
    return f"question {uuid.uuid4().hex}"


def client(gw: ThreadedGateway, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=10)


def messages(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def ask(c: openai.OpenAI, text: str, model: str = "chat", **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(model=model, messages=messages(text), **kw)


def streamed(c: openai.OpenAI, text: str, **kw: Any) -> tuple[str, list[Any]]:
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=messages(text), stream=True, **kw
    )
    return raw.headers["x-kanal-cache"], list(raw.parse())


def joined(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- hits, misses, bypass, tenants -------------------------------------------------------------


def test_second_identical_request_is_answered_from_the_cache(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    c = client(gw)
    first = ask(c, prompt)
    assert first.headers["x-kanal-cache"] == "miss"
    assert len(fake.requests) == 1
    second = ask(c, prompt, user="someone-else")  # `user` does not change the answer
    assert second.headers["x-kanal-cache"] == "hit"
    assert len(fake.requests) == 1  # no upstream call
    assert second.http_response.content == first.http_response.content  # the same body
    reply = second.parse()
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert reply.usage is not None and reply.usage.prompt_tokens == 12  # the original usage


def test_a_different_request_is_a_miss(gw: ThreadedGateway, fake: FakeOpenAI, prompt: str) -> None:
    c = client(gw)
    ask(c, prompt)
    assert ask(c, prompt, temperature=0.5).headers["x-kanal-cache"] == "miss"
    assert ask(c, prompt + "?").headers["x-kanal-cache"] == "miss"
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    "headers", [{"x-kanal-cache": "bypass"}, {"Cache-Control": "no-cache"}], ids=["x-kanal", "cc"]
)
def test_bypass_skips_the_lookup_and_stores_the_fresh_answer(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str, headers: dict[str, str]
) -> None:
    c = client(gw)
    ask(c, prompt)
    fake.script(Fault.ok("a fresher answer"))
    fresh = ask(c, prompt, extra_headers=headers)
    assert fresh.headers["x-kanal-cache"] == "bypass"
    assert fresh.parse().choices[0].message.content == "a fresher answer"
    assert len(fake.requests) == 2
    again = ask(c, prompt)
    assert again.headers["x-kanal-cache"] == "hit"
    assert again.parse().choices[0].message.content == "a fresher answer"
    assert len(fake.requests) == 2


def test_tenants_never_share_entries(gw: ThreadedGateway, fake: FakeOpenAI, prompt: str) -> None:
    a, b = client(gw, KEY_A), client(gw, KEY_B)
    assert ask(a, prompt).headers["x-kanal-cache"] == "miss"
    assert ask(a, prompt).headers["x-kanal-cache"] == "hit"
    assert ask(b, prompt).headers["x-kanal-cache"] == "miss"  # same route, other tenant
    assert len(fake.requests) == 2
    assert ask(b, prompt).headers["x-kanal-cache"] == "hit"
    assert len(fake.requests) == 2


def test_routes_without_cache_have_no_cache_header(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    c = client(gw)
    for _ in range(2):
        assert "x-kanal-cache" not in ask(c, prompt, model="uncached").headers
    assert len(fake.requests) == 2


def test_entries_expire_with_the_route_ttl(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    c = client(gw)
    assert ask(c, prompt, model="short").headers["x-kanal-cache"] == "miss"
    assert ask(c, prompt, model="short").headers["x-kanal-cache"] == "hit"
    time.sleep(0.5)  # ttl 400ms
    assert ask(c, prompt, model="short").headers["x-kanal-cache"] == "miss"
    assert len(fake.requests) == 2


# -- streams ---------------------------------------------------------------------------------


def test_a_streamed_request_is_answered_from_the_cache_as_a_stream(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    c = client(gw)
    reply = ask(c, prompt).parse()
    state, chunks = streamed(c, prompt, stream_options={"include_usage": True})
    assert state == "hit"
    assert len(fake.requests) == 1
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert joined(chunks) == reply.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage
    # without include_usage there is no usage chunk
    state, chunks = streamed(c, prompt)
    assert state == "hit" and all(ch.choices for ch in chunks)


def test_a_streamed_answer_is_stored_whole(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    c = client(gw)
    fake.script(Fault.ok("streamed words come back whole", prompt_tokens=7))
    state, chunks = streamed(c, prompt)
    assert state == "miss"
    assert joined(chunks) == "streamed words come back whole"
    hit = ask(c, prompt)
    assert hit.headers["x-kanal-cache"] == "hit"
    reply = hit.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "streamed words come back whole"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "m"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 5)
    state, again = streamed(c, prompt)
    assert state == "hit" and joined(again) == "streamed words come back whole"
    assert len(fake.requests) == 1


# -- never cached: errors, cut streams -----------------------------------------------------------


def test_errors_are_not_cached(gw: ThreadedGateway, fake: FakeOpenAI, prompt: str) -> None:
    c = client(gw)
    fake.script(Fault.status(500))
    with pytest.raises(openai.APIStatusError) as info:
        ask(c, prompt)
    assert info.value.response.headers["x-kanal-cache"] == "miss"
    assert ask(c, prompt).headers["x-kanal-cache"] == "miss"
    assert ask(c, prompt).headers["x-kanal-cache"] == "hit"
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "fault",
    [Fault.disconnect(after=3), Fault.truncate(after=3), Fault.stream_error(after=3)],
    ids=["disconnect", "truncate", "stream-error"],
)
def test_cut_streams_are_not_cached(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str, fault: Fault
) -> None:
    c = client(gw)
    fake.script(fault)
    try:
        state, chunks = streamed(c, prompt)
    except openai.APIError:
        pass  # the gateway reported the failure in-stream
    else:
        assert state == "miss"
        assert not [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    state, chunks = streamed(c, prompt)
    assert state == "miss"
    assert joined(chunks) == "Hello from the fake upstream."
    assert streamed(c, prompt)[0] == "hit"
    assert len(fake.requests) == 2


def test_a_stream_the_caller_abandons_is_never_stored_partial(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    """The gateway learns that a caller left only when it next writes: if the upstream answer
    still completes, it is whole and may be stored; if the relay stops, nothing is."""
    c = client(gw)
    fake.script(Fault.ok("one two three four five six", pause_after=3))
    stream = c.chat.completions.create(model="chat", messages=messages(prompt), stream=True)
    next(iter(stream))
    stream.close()  # the caller goes away mid-answer
    time.sleep(0.1)
    fake.resume()
    time.sleep(0.3)  # let the gateway finish the abandoned relay
    again = ask(c, prompt)
    if again.headers["x-kanal-cache"] == "hit":
        assert again.parse().choices[0].message.content == "one two three four five six"
    else:
        assert len(fake.requests) == 2


def test_a_stream_stalled_upstream_is_not_cached(fake: FakeOpenAI, prompt: str) -> None:
    snapshot = snapshot_from_yaml(manifests(fake.url))
    with threaded_gateway(snapshot, stream_idle_timeout=0.3) as gw:
        c = client(gw)
        fake.script(Fault.hang(after=3))
        with pytest.raises(openai.APIError):
            streamed(c, prompt)  # the gateway gives up on the silent upstream, in-stream
        assert streamed(c, prompt)[0] == "miss"
        assert streamed(c, prompt)[0] == "hit"
        assert len(fake.requests) == 2


# -- completions and embeddings ---------------------------------------------------------------


def test_completions_and_embeddings_are_cached(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    c = client(gw)
    first = c.completions.with_raw_response.create(model="chat", prompt=prompt)
    second = c.completions.with_raw_response.create(model="chat", prompt=prompt)
    assert (first.headers["x-kanal-cache"], second.headers["x-kanal-cache"]) == ("miss", "hit")
    assert second.http_response.content == first.http_response.content
    streamed_text = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="chat", prompt=prompt, stream=True)
        if ch.choices
    )
    assert streamed_text == first.parse().choices[0].text
    one = c.embeddings.with_raw_response.create(model="chat", input=[prompt, "b"])
    two = c.embeddings.with_raw_response.create(model="chat", input=[prompt, "b"])
    assert (one.headers["x-kanal-cache"], two.headers["x-kanal-cache"]) == ("miss", "hit")
    assert two.parse().data[0].embedding == one.parse().data[0].embedding
    assert len(fake.requests) == 2


def test_answers_over_cache_max_bytes_are_not_stored(fake: FakeOpenAI, prompt: str) -> None:
    with threaded_gateway(snapshot_from_yaml(manifests(fake.url)), cache_max_bytes=200) as gw:
        c = client(gw)
        fake.script(Fault.ok("x " * 200))
        assert ask(c, prompt).headers["x-kanal-cache"] == "miss"
        assert ask(c, prompt).headers["x-kanal-cache"] == "miss"
        assert len(fake.requests) == 2


# -- gRPC ------------------------------------------------------------------------------------


def test_grpc_chat_and_chat_stream_are_answered_from_the_cache(
    gw: ThreadedGateway, fake: FakeOpenAI, prompt: str
) -> None:
    metadata = (("authorization", f"Bearer {KEY_A}"),)
    request = pb.ChatRequest(model="chat", messages=[pb.ChatMessage(role="user", content=prompt)])
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        first, call1 = stub.Chat.with_call(request, metadata=metadata, timeout=10)
        second, call2 = stub.Chat.with_call(request, metadata=metadata, timeout=10)
        assert dict(call1.initial_metadata())["x-kanal-cache"] == "miss"
        assert dict(call2.initial_metadata())["x-kanal-cache"] == "hit"
        assert second == first
        stream = stub.ChatStream(request, metadata=metadata, timeout=10)
        chunks = list(stream)
        assert dict(stream.initial_metadata())["x-kanal-cache"] == "hit"
        text = "".join(ch.choices[0].delta.content for ch in chunks if ch.choices)
        assert text == first.choices[0].message.content
    assert len(fake.requests) == 1
