"""Conversation context end to end: real gateways (HTTP and gRPC), the openai SDK, fake
upstreams that record exactly what they received, the mock provider, memory and Redis."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
import openai
import orjson
import pytest

from fakes import FakeOpenAI, Fault, ToolCall, unused_port
from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml, threaded_gateway
from kanal.gateway.policy.context import ContextPolicy
from kanal.gateway.server import RunningGateway
from kanal.gateway.settings import GatewaySettings
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

Json = dict[str, Any]
REPLY = "Hello from the fake upstream."


def mock_backend(namespace: str = "default", name: str = "mock") -> str:
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  provider: mock
  models:
    - {{name: mock-small, contextWindow: 8192, pricing: {{inputPerMTok: 1, outputPerMTok: 2}}}}
"""


def fake_backend(url: str, name: str = "fake") -> str:
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: {name}}}
spec:
  provider: openai-compatible
  endpoint: {url}
  models: [{{name: m, contextWindow: 8192, pricing: {{inputPerMTok: 1, outputPerMTok: 2}}}}]
"""


def route(
    backend: str = "mock",
    model: str = "mock-small",
    context: str = "{}",
    extra: str = "",
    name: str = "chat",
    namespace: str = "default",
) -> str:
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  backends: [{{backendRef: {{name: {backend}}}, model: {model}}}]
  retry: {{attempts: 0}}
  context: {context}
{extra}
"""


def key_secret(name: str, namespace: str, key: str) -> str:
    return f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {namespace}, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: {key}}}
"""


def user(text: str) -> Json:
    return {"role": "user", "content": text}


def chat(text: str, **fields: Any) -> Json:
    return {"model": "chat", "messages": [user(text)], **fields}


def mock_reply(text: str) -> str:
    return f"Mock reply from mock-small: {text}"


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest) -> GatewaySettings:
    if request.param == "memory":
        return TEST_SETTINGS
    return replace(TEST_SETTINGS, redis_url=request.getfixturevalue("redis_url"))


# -- an async client for gateway_with ------------------------------------------------------


class Client:
    def __init__(self, http: aiohttp.ClientSession, running: RunningGateway) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{running.http_port}/v1"
        self.context: ContextPolicy = running.gateway.context

    def _headers(self, session: str | None, key: str | None) -> dict[str, str]:
        headers = {"X-Session-Id": session} if session else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def chat(self, body: Json, session: str | None = "s1", key: str | None = None) -> Any:
        async with self.http.post(
            f"{self.base}/chat/completions", json=body, headers=self._headers(session, key)
        ) as r:
            payload = await r.json()
            assert r.status == 200, payload
            return payload

    async def status(self, body: Json, session: str | None = "s1") -> int:
        async with self.http.post(
            f"{self.base}/chat/completions", json=body, headers=self._headers(session, None)
        ) as r:
            await r.read()
            return r.status

    async def stream(self, body: Json, session: str = "s1") -> str:
        text = []
        async with self.http.post(
            f"{self.base}/chat/completions",
            json={**body, "stream": True},
            headers=self._headers(session, None),
        ) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: {"):
                    for choice in orjson.loads(line[6:]).get("choices") or ():
                        text.append(choice.get("delta", {}).get("content") or "")
        return "".join(text)

    async def session(self, session: str = "s1", key: str | None = None) -> tuple[int, Any]:
        async with self.http.get(
            f"{self.base}/sessions/{session}", headers=self._headers(None, key)
        ) as r:
            return r.status, await r.json()

    async def delete(self, session: str = "s1", key: str | None = None) -> tuple[int, Any]:
        async with self.http.delete(
            f"{self.base}/sessions/{session}", headers=self._headers(None, key)
        ) as r:
            return r.status, await r.json()

    async def messages(self, session: str = "s1", key: str | None = None) -> list[Json]:
        status, body = await self.session(session, key)
        assert status == 200, body
        [entry] = body["routes"].values()
        return list(entry["messages"])


def serve(
    yaml_text: str,
    check: Callable[[Client], Awaitable[None]],
    settings: GatewaySettings = TEST_SETTINGS,
    timeout: float = 60,
) -> None:
    async def main() -> None:
        async with (
            gateway_with(snapshot_from_yaml(yaml_text), settings) as running,
            aiohttp.ClientSession() as http,
        ):
            await check(Client(http, running))

    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return orjson.loads(r.read())


def bodies(fake: FakeOpenAI) -> list[list[Json]]:
    return [r.body["messages"] for r in fake.requests if r.path.endswith("/chat/completions")]


# -- HTTP with the openai SDK ----------------------------------------------------------------


@pytest.fixture
def sdk_gateway(settings: GatewaySettings) -> Iterator[tuple[openai.OpenAI, FakeOpenAI, str]]:
    with FakeOpenAI().serve_in_thread() as fake:
        text = fake_backend(fake.url) + route(
            "fake", "m", extra="  prompt: {system: You are kanal.}"
        )
        with threaded_gateway(snapshot_from_yaml(text), settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            yield client, fake, gw.base_url


def test_the_second_turn_carries_the_first_over_http(
    sdk_gateway: tuple[openai.OpenAI, FakeOpenAI, str],
) -> None:
    client, fake, base = sdk_gateway
    session = {"X-Session-Id": "conv-1"}
    first = client.chat.completions.create(
        model="chat", messages=[user("my name is Ada")], extra_headers=session
    )
    assert first.choices[0].message.content == REPLY
    client.chat.completions.create(
        model="chat",
        messages=[{"role": "system", "content": "be brief"}, user("what is my name?")],
        extra_headers=session,
    )
    system = {"role": "system", "content": "You are kanal."}
    assert bodies(fake) == [
        [system, user("my name is Ada")],
        [
            system,
            {"role": "system", "content": "be brief"},
            user("my name is Ada"),
            {"role": "assistant", "content": REPLY},
            user("what is my name?"),
        ],
    ]
    # no session id: the request passes untouched (no history, no route prompt added here)
    client.chat.completions.create(model="chat", messages=[user("stateless")])
    assert bodies(fake)[-1] == [user("stateless")]
    # streamed turns are stored too
    stream = client.chat.completions.create(
        model="chat", messages=[user("stream it")], stream=True, extra_headers=session
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    data = get_json(f"{base}/sessions/conv-1")
    assert data["id"] == "conv-1" and data["object"] == "session"
    entry = data["routes"]["chat"]
    assert entry["route"] == "default/chat" and entry["summary"] is None
    assert [m["content"] for m in entry["messages"]] == [
        "my name is Ada",
        REPLY,
        "what is my name?",
        REPLY,
        "stream it",
        REPLY,
    ]
    assert entry["tokens"] > 0 and 0 < entry["expiresIn"] <= 24 * 3600
    client.chat.completions.create(model="chat", messages=[user("last")], extra_headers=session)
    assert len(bodies(fake)[-1]) == 1 + 6 + 1


def test_tool_calls_are_stored_with_their_results(
    sdk_gateway: tuple[openai.OpenAI, FakeOpenAI, str],
) -> None:
    client, fake, _ = sdk_gateway
    session = {"X-Session-Id": "tools"}
    fake.script(Fault.ok("", tool_calls=[ToolCall("lookup", {"q": "kanal"}, id="call_1")]))
    asked = client.chat.completions.create(
        model="chat", messages=[user("look up kanal")], extra_headers=session
    )
    call = asked.choices[0].message
    assert call.tool_calls and asked.choices[0].finish_reason == "tool_calls"
    # the SDK loop: the assistant message goes back with the result; it is stored once
    client.chat.completions.create(
        model="chat",
        messages=[
            call.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_1", "content": "a gateway"},
        ],
        extra_headers=session,
    )
    upstream = bodies(fake)[-1]
    assert [m["role"] for m in upstream] == ["system", "user", "assistant", "tool"]
    assert upstream[2]["tool_calls"][0]["id"] == "call_1"
    client.chat.completions.create(model="chat", messages=[user("thanks")], extra_headers=session)
    assert [m["role"] for m in bodies(fake)[-1]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


# -- gRPC --------------------------------------------------------------------------------------


def test_grpc_turns_share_the_session_with_http() -> None:
    with FakeOpenAI().serve_in_thread() as fake:
        text = fake_backend(fake.url) + route("fake", "m")
        with (
            threaded_gateway(snapshot_from_yaml(text)) as gw,
            grpc.insecure_channel(gw.grpc_target) as channel,
        ):
            stub = pb_grpc.GatewayStub(channel)
            metadata = (("x-session-id", "grpc-conv"),)
            request = pb.ChatRequest(
                model="chat", messages=[pb.ChatMessage(role="user", content="one")]
            )
            stub.Chat(request, metadata=metadata, timeout=10)
            streamed = pb.ChatRequest(
                model="chat", messages=[pb.ChatMessage(role="user", content="two")]
            )
            chunks = list(stub.ChatStream(streamed, metadata=metadata, timeout=10))
            assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == REPLY
            three = pb.ChatRequest(
                model="chat", messages=[pb.ChatMessage(role="user", content="3")]
            )
            stub.Chat(three, metadata=metadata, timeout=10)
            assert [m["content"] for m in bodies(fake)[-1]] == ["one", REPLY, "two", REPLY, "3"]
            # the same conversation seen over HTTP
            data = get_json(f"{gw.base_url}/sessions/grpc-conv")
            assert len(data["routes"]["chat"]["messages"]) == 6
            # without metadata: untouched
            stub.Chat(request, timeout=10)
            assert [m["content"] for m in bodies(fake)[-1]] == ["one"]


# -- unfinished turns ------------------------------------------------------------------------


def test_errors_and_broken_streams_leave_the_session_as_it_was(settings: GatewaySettings) -> None:
    async def main() -> None:
        async with FakeOpenAI() as fake:

            async def check(client: Client) -> None:
                await client.chat(chat("kept"))
                fake.script(Fault.status(500))
                assert await client.status(chat("upstream failed")) == 502
                fake.script(Fault.disconnect(after=3))
                await client.stream(chat("stream broken by the upstream"))
                fake.script(Fault.stream_error(after=2))
                await client.stream(chat("stream with an error event"))
                # the caller goes away mid-stream
                fake.script(Fault.ok(pause_after=2))
                async with client.http.post(
                    f"{client.base}/chat/completions",
                    json=chat("caller leaves", stream=True),
                    headers={"X-Session-Id": "s1"},
                ) as r:
                    await r.content.readline()
                await asyncio.sleep(0.3)
                fake.resume()
                assert [m["content"] for m in await client.messages()] == ["kept", REPLY]
                await client.chat(chat("next"))
                assert [m["content"] for m in bodies(fake)[-1]] == ["kept", REPLY, "next"]
                assert len(await client.messages()) == 4

            await asyncio.wait_for(
                _serve_async(fake_backend(fake.url) + route("fake", "m"), check, settings), 60
            )

    asyncio.run(main())


async def _serve_async(
    yaml_text: str, check: Callable[[Client], Awaitable[None]], settings: GatewaySettings
) -> None:
    async with (
        gateway_with(snapshot_from_yaml(yaml_text), settings) as running,
        aiohttp.ClientSession() as http,
    ):
        await check(Client(http, running))


# -- concurrency, caps, TTL --------------------------------------------------------------------


def test_forty_concurrent_turns_of_one_session_are_all_stored(settings: GatewaySettings) -> None:
    async def check(client: Client) -> None:
        texts = [f"question {i}" for i in range(40)]
        replies = await asyncio.gather(*(client.chat(chat(t)) for t in texts))
        assert [r["choices"][0]["message"]["content"] for r in replies] == [
            mock_reply(t) for t in texts
        ]
        stored = await client.messages()
        assert len(stored) == 80
        turns = [(stored[i]["content"], stored[i + 1]["content"]) for i in range(0, 80, 2)]
        assert sorted(turns) == sorted((t, mock_reply(t)) for t in texts)

    serve(mock_backend() + route(context="{maxTokens: 100000}"), check, settings)


def test_caps_keep_the_newest_messages(settings: GatewaySettings) -> None:
    async def check(client: Client) -> None:
        for i in range(3):
            await client.chat(chat(f"t{i}"))
        assert [m["content"] for m in await client.messages()] == [
            "t1",
            mock_reply("t1"),
            "t2",
            mock_reply("t2"),
        ]

    serve(mock_backend() + route(), check, replace(settings, context_max_turns=4))


def test_budget_sends_only_the_newest_turns_that_fit() -> None:
    async def main() -> None:
        async with FakeOpenAI() as fake:

            async def check(client: Client) -> None:
                for i in range(6):
                    await client.chat(chat(f"turn {i} " + "word " * 20))
                # every stored message is about 30 tokens; 100 leave room for two of them
                upstream = bodies(fake)[-1]
                assert [m["content"][:6] for m in upstream] == ["turn 4", REPLY[:6], "turn 5"]
                assert len(await client.messages()) == 12  # the store keeps everything

            await _serve_async(
                fake_backend(fake.url) + route("fake", "m", context="{maxTokens: 100}"),
                check,
                TEST_SETTINGS,
            )

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_ttl_slides_with_each_turn() -> None:
    async def check(client: Client) -> None:
        await client.chat(chat("one"))
        await asyncio.sleep(0.5)
        await client.chat(chat("two"))
        await asyncio.sleep(0.5)  # 1s after the first turn, 0.5s after the second
        status, body = await client.session()
        assert status == 200 and 0 < body["routes"]["chat"]["expiresIn"] <= 0.5
        assert len(body["routes"]["chat"]["messages"]) == 4
        await asyncio.sleep(0.6)
        status, body = await client.session()
        assert status == 404 and body["error"]["code"] == "session_not_found"
        await client.chat(chat("fresh"))  # a new session under the same id
        assert [m["content"] for m in await client.messages()] == ["fresh", mock_reply("fresh")]

    serve(mock_backend() + route(context="{ttl: 900ms}"), check)


# -- tenants -------------------------------------------------------------------------------------


def test_tenants_sharing_a_session_id_see_separate_histories(settings: GatewaySettings) -> None:
    text = (
        mock_backend("team-a")
        + route(namespace="team-a", extra="  access: {namespaces: [team-b]}")
        + key_secret("key-a", "team-a", "sk-team-a-0123456789")
        + key_secret("key-b", "team-b", "sk-team-b-0123456789")
    )
    a, b = "sk-team-a-0123456789", "sk-team-b-0123456789"

    async def check(client: Client) -> None:
        await client.chat(chat("alpha"), session="shared", key=a)
        await client.chat(chat("beta"), session="shared", key=b)
        await client.chat(chat("a only"), session="mine", key=a)
        assert [m["content"] for m in await client.messages("shared", a)] == [
            "alpha",
            mock_reply("alpha"),
        ]
        assert [m["content"] for m in await client.messages("shared", b)] == [
            "beta",
            mock_reply("beta"),
        ]
        # team-b's second turn went upstream with team-b's history only
        second = await client.chat(chat("and now?"), session="shared", key=b)
        words = "beta Mock reply from mock-small: beta and now?"
        assert second["usage"]["prompt_tokens"] == len(words.split(" "))
        for status, body in (
            await client.session("mine", b),
            await client.delete("mine", b),
        ):
            assert status == 404 and body["error"]["code"] == "session_not_found"
        assert len(await client.messages("mine", a)) == 2  # untouched by team-b's DELETE
        status, body = await client.delete("shared", a)
        assert status == 200 and body == {
            "id": "shared",
            "object": "session.deleted",
            "deleted": True,
        }
        assert (await client.session("shared", a))[0] == 404
        assert len(await client.messages("shared", b)) == 4

    serve(text, check, replace(settings, anonymous_tenant=None))


# -- summarize -----------------------------------------------------------------------------------


SUMMARIZE = (
    "{maxTokens: 120, strategy: summarize, "
    "summarizer: {backendRef: {name: mock}, model: mock-small}}"
)


def test_old_turns_fold_into_a_summary_with_the_mock_summarizer(settings: GatewaySettings) -> None:
    async def main() -> None:
        async with FakeOpenAI() as fake:

            async def check(client: Client) -> None:
                for i in range(6):
                    await client.chat(chat(f"fact {i}: " + "detail " * 12))
                    await client.context.settled()
                entry = (await client.session())[1]["routes"]["chat"]
                assert entry["summary"].startswith("Mock reply from mock-small: Summary so far:")
                assert 2 <= len(entry["messages"]) < 12
                assert entry["messages"][-1]["content"] == REPLY  # the newest turn is verbatim
                assert entry["tokens"] <= 120 + 60
                await client.chat(chat("what do you know?"))
                upstream = bodies(fake)[-1]
                assert upstream[0]["role"] == "system"
                assert upstream[0]["content"].endswith(entry["summary"])
                assert upstream[-1] == user("what do you know?")

            text = mock_backend() + fake_backend(fake.url) + route("fake", "m", context=SUMMARIZE)
            await _serve_async(text, check, settings)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_turn_appended_while_summarizing_is_not_lost(settings: GatewaySettings) -> None:
    async def main() -> None:
        async with FakeOpenAI() as summarizer:
            summarizer.default = Fault.ok("the running summary", delay=0.8)

            async def check(client: Client) -> None:
                turn = 0
                while not summarizer.requests:  # until the history overflows and a fold starts
                    await client.chat(chat(f"turn {turn} " + "word " * 12))
                    turn += 1
                    await asyncio.sleep(0.02)
                    assert turn < 20
                started = time.monotonic()
                await client.chat(chat("late turn"))  # while the summarizer works
                assert time.monotonic() - started < 0.6  # never waits for the fold
                await client.context.settled()
                entry = (await client.session())[1]["routes"]["chat"]
                assert entry["summary"] == "the running summary"
                contents = [m["content"] for m in entry["messages"]]
                assert contents[-2:] == ["late turn", mock_reply("late turn")]
                assert not any(c.startswith("turn 0 ") for c in contents)  # folded away
                assert len(contents) % 2 == 0 and len(contents) < 2 * (turn + 1)

            context = (
                "{maxTokens: 120, strategy: summarize, "
                "summarizer: {backendRef: {name: fake}, model: m}}"
            )
            text = mock_backend() + fake_backend(summarizer.url) + route(context=context)
            await _serve_async(text, check, settings)

    asyncio.run(asyncio.wait_for(main(), 60))


# -- trouble ---------------------------------------------------------------------------------


def test_an_unreachable_store_refuses_session_turns_with_503() -> None:
    async def check(client: Client) -> None:
        async with client.http.post(
            f"{client.base}/chat/completions", json=chat("hi"), headers={"X-Session-Id": "s1"}
        ) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "context_store_unavailable"
        status, body = await client.session()
        assert status == 503 and body["error"]["code"] == "context_store_unavailable"
        # without a session id the route still answers
        reply = await client.chat(chat("no session"), session=None)
        assert reply["choices"][0]["message"]["content"] == mock_reply("no session")

    down = replace(
        TEST_SETTINGS, redis_url=f"redis://127.0.0.1:{unused_port()}/0", redis_timeout=0.5
    )
    serve(mock_backend() + route(), check, down)


def test_a_failing_summarizer_keeps_the_history() -> None:
    async def main() -> None:
        async with FakeOpenAI() as summarizer:
            summarizer.default = Fault.status(500)

            async def check(client: Client) -> None:
                for i in range(5):
                    await client.chat(chat(f"turn {i} " + "word " * 12))
                    await client.context.settled()
                assert len(summarizer.requests) == 1  # failed once, then paused for the route
                entry = (await client.session())[1]["routes"]["chat"]
                assert entry["summary"] is None and len(entry["messages"]) == 10

            context = (
                "{maxTokens: 60, strategy: summarize, "
                "summarizer: {backendRef: {name: fake}, model: m}}"
            )
            text = mock_backend() + fake_backend(summarizer.url) + route(context=context)
            await _serve_async(text, check, TEST_SETTINGS)

    asyncio.run(asyncio.wait_for(main(), 60))
