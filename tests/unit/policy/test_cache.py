"""The response cache without servers: keys, the in-memory store's bounds, what is stored."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
import pytest

from kanal.api.llmroute import Cache
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy.base import Call, Caller, Outcome, Usage
from kanal.gateway.policy.cache import (
    HEADER,
    CachePolicy,
    MemoryCacheStore,
    assembled_response,
    cache_key,
)
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores
from kanal.snapshot import RouteConfig

T = TypeVar("T")
CHAT: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0.2,
}
ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 5))


def route(ttl: str = "1h", route_id: str = "team-a/chat", enabled: bool = True) -> RouteConfig:
    return RouteConfig(
        id=route_id,
        namespace=route_id.split("/")[0],
        model="chat",
        tiers=(),
        tenants=frozenset({"team-a"}),
        cache=Cache(enabled=enabled, ttl=ttl),
    )


def call(
    body: dict[str, Any] = CHAT,
    *,
    op: Any = "chat",
    tenant: str = "team-a",
    stream: bool = False,
    bypass: bool = False,
    the_route: RouteConfig | None = None,
) -> Call:
    return Call(
        op=op,
        caller=Caller(tenant=tenant),
        route=the_route or route(),
        body=body,
        request_id="req_1",
        stream=stream,
        cache_bypass=bypass,
    )


def policy(**settings: Any) -> CachePolicy:
    return CachePolicy(Stores(GatewaySettings(**settings)))


# -- keys ------------------------------------------------------------------------------------


def key_of(body: dict[str, Any], **kw: Any) -> str | None:
    c = call(body, **kw)
    return cache_key(c.op, c.route.id, c.caller.tenant, c.body)


def test_key_is_a_hash_tagged_per_tenant() -> None:
    key = key_of(CHAT)
    assert key is not None
    assert re.fullmatch(r"kanal:cache:\{team-a\}:[0-9a-f]{64}", key)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert len(key_of(big) or "") == len(key)  # never the payload
    assert "hello" not in key


def test_key_ignores_what_does_not_change_the_answer() -> None:
    base = key_of(CHAT)
    noise = {
        **CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "someone",
        "store": False,
        "metadata": {"a": "b"},
    }
    assert key_of(noise) == base


def test_key_is_canonical_in_key_order() -> None:
    reordered = {
        "temperature": 0.2,
        "messages": [{"content": "hello", "role": "user"}],
        "model": "chat",
    }
    assert key_of(reordered) == key_of(CHAT)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.3},
        {"messages": [{"role": "user", "content": "hello!"}]},
        {"max_tokens": 5},
        {"n": 2},
        {"seed": 1},
    ],
)
def test_key_changes_with_what_changes_the_answer(change: dict[str, Any]) -> None:
    assert key_of({**CHAT, **change}) != key_of(CHAT)


def test_key_differs_by_tenant_route_and_operation() -> None:
    base = key_of(CHAT)
    assert key_of(CHAT, tenant="team-b") != base
    assert (key_of(CHAT, tenant="team-b") or "").startswith("kanal:cache:{team-b}:")
    assert key_of(CHAT, the_route=route(route_id="team-a/other")) != base
    assert key_of(CHAT, op="completion") != base


def test_unserialisable_body_has_no_key() -> None:
    assert key_of({**CHAT, "seed": 2**70}) is None


# -- the in-memory store's bounds ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_is_an_lru_bounded_by_entries() -> None:
    async def main() -> None:
        store = MemoryCacheStore(max_entries=3, max_bytes=1000)
        for k in "abc":
            assert await store.set(k, k.encode(), 60)
        assert await store.get("a") == b"a"  # a is now the most recently used
        await store.set("d", b"d", 60)
        assert len(store) == 3
        assert await store.get("b") is None  # the least recently used went
        assert [await store.get(k) for k in "acd"] == [b"a", b"c", b"d"]

    run(main())


def test_memory_store_is_bounded_by_bytes() -> None:
    async def main() -> None:
        store = MemoryCacheStore(max_entries=100, max_bytes=10)
        assert await store.set("a", b"1234", 60)
        assert await store.set("b", b"1234", 60)
        assert store.size_bytes == 8
        assert await store.set("c", b"1234", 60)  # 12 > 10: a goes
        assert store.size_bytes == 8 and await store.get("a") is None
        assert not await store.set("huge", b"x" * 11, 60)  # never fits
        assert await store.get("b") == b"1234"
        assert await store.set("b", b"12", 60)  # overwrite accounts the new size
        assert store.size_bytes == 6

    run(main())


def test_memory_store_expires_entries() -> None:
    async def main() -> None:
        clock = Clock()
        store = MemoryCacheStore(clock=clock)
        await store.set("a", b"v", 10)
        clock.now += 9.9
        assert await store.get("a") == b"v"
        clock.now += 0.2
        assert await store.get("a") is None
        assert len(store) == 0 and store.size_bytes == 0
        assert not await store.set("b", b"v", 0)

    run(main())


def test_memory_store_refuses_no_room() -> None:
    with pytest.raises(ValueError):
        MemoryCacheStore(max_entries=0)


# -- the policy ------------------------------------------------------------------------------


def test_policy_is_enabled_by_the_route() -> None:
    p = policy()
    assert p.enabled(route())
    assert not p.enabled(route(enabled=False))
    assert not p.enabled(
        RouteConfig(id="a/b", namespace="a", model="m", tiers=(), tenants=frozenset())
    )


def test_miss_then_store_then_hit() -> None:
    async def main() -> None:
        p = policy()
        first = call()
        assert await p.before(first) is None
        assert first.headers[HEADER] == "miss"
        await p.after(first, Outcome(response=ANSWER, completed=True))
        again = call({**CHAT, "user": "another"})
        answer = await p.before(again)
        assert again.headers[HEADER] == "hit"
        assert answer == ANSWER and answer is not ANSWER  # a fresh object per hit
        # the hit itself is not stored again, other tenants do not see it
        await p.after(again, Outcome(response=answer, completed=True, cached=True))
        other = call(tenant="team-b")
        assert await p.before(other) is None and other.headers[HEADER] == "miss"

    run(main())


def test_bypass_skips_the_lookup_but_stores() -> None:
    async def main() -> None:
        p = policy()
        seed = call()
        await p.before(seed)
        await p.after(seed, Outcome(response=ANSWER, completed=True))
        bypass = call(bypass=True)
        assert await p.before(bypass) is None
        assert bypass.headers[HEADER] == "bypass"
        fresh = {**ANSWER, "id": "chatcmpl-2"}
        await p.after(bypass, Outcome(response=fresh, completed=True))
        assert await p.before(call()) == fresh

    run(main())


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(error=GatewayError(502, "upstream broke")),
        Outcome(response=ANSWER, completed=False),
        Outcome(response=ANSWER, completed=True, error=GatewayError(500, "late")),
        Outcome(),
    ],
    ids=["error", "not-completed", "completed-with-error", "nothing"],
)
def test_failures_are_never_stored(outcome: Outcome) -> None:
    async def main() -> None:
        p = policy()
        c = call()
        await p.before(c)
        await p.after(c, outcome)
        assert await p.before(call()) is None

    run(main())


def test_cut_streams_are_never_stored() -> None:
    async def main() -> None:
        p = policy()
        c = call(stream=True)
        await p.before(c)
        outcome = Outcome(text="Hello fr", finish_reason=None, completed=False, model="m")
        await p.after(c, outcome)
        assert await p.before(call()) is None

    run(main())


def test_answers_over_cache_max_bytes_are_not_stored() -> None:
    async def main() -> None:
        p = policy(cache_max_bytes=len(orjson.dumps(ANSWER)) - 1)
        c = call()
        await p.before(c)
        await p.after(c, Outcome(response=ANSWER, completed=True))
        assert await p.before(call()) is None
        roomy = policy(cache_max_bytes=len(orjson.dumps(ANSWER)))
        c = call()
        await roomy.before(c)
        await roomy.after(c, Outcome(response=ANSWER, completed=True))
        assert await roomy.before(call()) == ANSWER

    run(main())


def test_streamed_answers_are_stored_as_full_responses() -> None:
    async def main() -> None:
        p = policy()
        c = call(stream=True)
        await p.before(c)
        outcome = Outcome(
            text="Hello there",
            finish_reason="stop",
            completed=True,
            model="m",
            usage=Usage(3, 2),
        )
        await p.after(c, outcome)
        hit = await p.before(call())
        assert hit is not None
        assert hit["object"] == "chat.completion"
        assert hit["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
        assert hit["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        assert hit["model"] == "m"

    run(main())


def test_a_stream_is_not_answered_from_a_multi_choice_entry() -> None:
    async def main() -> None:
        p = policy()
        body = {**CHAT, "n": 2}
        c = call(body)
        await p.before(c)
        two = {**ANSWER, "choices": [ANSWER["choices"][0], {**ANSWER["choices"][0], "index": 1}]}
        await p.after(c, Outcome(response=two, completed=True))
        assert await p.before(call(body)) == two
        streamed = call(body, stream=True)
        assert await p.before(streamed) is None
        assert streamed.headers[HEADER] == "miss"

    run(main())


# -- assembling streamed answers -------------------------------------------------------------


def done(**kw: Any) -> Outcome:
    fields: dict[str, Any] = {
        "text": "Hi",
        "finish_reason": "stop",
        "completed": True,
        "model": "m",
        "usage": Usage(1, 1),
    }
    fields.update(kw)
    return Outcome(**fields)


def test_assembled_text_completion() -> None:
    c = call({"model": "chat", "prompt": "Say hi"}, op="completion", stream=True)
    response = assembled_response(c, done(finish_reason="length"))
    assert response is not None
    assert response["object"] == "text_completion"
    assert response["id"] == "cmpl-req_1"
    assert response["choices"] == [
        {"index": 0, "text": "Hi", "logprobs": None, "finish_reason": "length"}
    ]


def test_estimated_usage_is_not_stored_as_usage() -> None:
    response = assembled_response(call(stream=True), done(usage=Usage(1, 1, "estimated")))
    assert response is not None and "usage" not in response


@pytest.mark.parametrize(
    ("body", "op", "outcome"),
    [
        (CHAT, "chat", done(finish_reason="tool_calls")),
        ({**CHAT, "logprobs": True}, "chat", done()),
        ({**CHAT, "n": 3}, "chat", done()),
        ({"model": "chat", "prompt": ["a", "b"]}, "completion", done()),
        ({"model": "chat", "prompt": "a", "logprobs": 2}, "completion", done()),
    ],
    ids=["tool-calls", "logprobs", "n", "several-prompts", "completion-logprobs"],
)
def test_streams_not_assembled_in_full_are_not_stored(
    body: dict[str, Any], op: str, outcome: Outcome
) -> None:
    assert assembled_response(call(body, op=op, stream=True), outcome) is None
