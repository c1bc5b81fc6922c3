"""One contract for both session stores: in memory and Redis (the bench's real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from kanal.gateway.policy._context_store import (
    Entry,
    MemorySessionStore,
    RedisSessionStore,
    SessionKey,
    SessionStore,
)

KEY = SessionKey("team-a", "team-a/chat", "s-1")
BIG = 10**9
Check = Callable[[SessionStore], Awaitable[None]]


def user(text: str, tokens: int = 5) -> Entry:
    return Entry({"role": "user", "content": text}, tokens)


def assistant(text: str, tokens: int = 7) -> Entry:
    return Entry({"role": "assistant", "content": text}, tokens)


def calling(*ids: str, tokens: int = 9) -> Entry:
    calls = [
        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
    ]
    return Entry({"role": "assistant", "content": None, "tool_calls": calls}, tokens)


def result(call_id: str, tokens: int = 3) -> Entry:
    return Entry({"role": "tool", "tool_call_id": call_id, "content": ""}, tokens)


async def append(store: SessionStore, *entries: Entry, key: SessionKey = KEY, **kw: Any) -> Any:
    options: dict[str, Any] = {"ttl": 60.0, "max_messages": BIG, "max_bytes": BIG, **kw}
    return await store.append(key, list(entries), **options)


def texts(history: Any) -> list[Any]:
    return [s.message.get("content") or s.message.get("tool_call_id") for s in history.messages]


@pytest.fixture(params=["memory", "redis"])
def run(request: pytest.FixtureRequest) -> Callable[[Check], None]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def runner(check: Check) -> None:
        async def main() -> None:
            if url is None:
                await asyncio.wait_for(check(MemorySessionStore()), 30)
                return
            client = aioredis.from_url(url, decode_responses=False)
            try:
                await asyncio.wait_for(check(RedisSessionStore(client)), 30)
            finally:
                await client.aclose()

        asyncio.run(main())

    return runner


def test_append_then_read_back_in_order(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        assert not (await store.load_all(KEY)).exists
        assert not (await store.load(KEY, 100)).exists
        done = await append(store, user("hello"), assistant("hi there"), ttl=30)
        assert (done.tokens, done.summary_tokens, done.count, done.dropped) == (12, 0, 2, 0)
        history = await store.load_all(KEY)
        assert history.exists and history.summary is None and history.tokens == 12
        assert [(s.seq, s.tokens, s.continuation) for s in history.messages] == [
            (1, 5, False),
            (2, 7, False),
        ]
        assert [s.message for s in history.messages] == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi there"},
        ]
        assert history.expires_in is not None and 29 < history.expires_in <= 30
        epoch = history.epoch
        await append(store, user("again"), assistant("ok"))
        history = await store.load_all(KEY)
        assert history.epoch == epoch  # the session's identity does not change with turns
        assert [s.seq for s in history.messages] == [1, 2, 3, 4]
        assert texts(history) == ["hello", "hi there", "again", "ok"]

    run(check)


def test_load_returns_the_newest_messages_that_fit(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        for i in range(5):
            await append(store, user(f"u{i}", 5), assistant(f"a{i}", 5))
        assert texts(await store.load(KEY, 20)) == ["u3", "a3", "u4", "a4"]
        assert texts(await store.load(KEY, 19)) == ["a3", "u4", "a4"]
        assert texts(await store.load(KEY, 1000)) == texts(await store.load_all(KEY))
        # over budget: the newest message still comes (the prompt builder decides)
        assert texts(await store.load(KEY, 0)) == ["a4"]
        history = await store.load(KEY, 20)
        assert history.tokens == 50  # every stored message counts, not only those loaded

    run(check)


def test_load_never_starts_inside_a_tool_unit(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        await append(store, user("q", 5), calling("c1", "c2", tokens=10))
        await append(store, result("c1", 3), result("c2", 3), assistant("done", 5))
        # the budget reaches into the tool results but not their call: the results are left out
        assert texts(await store.load(KEY, 11)) == ["done"]
        assert texts(await store.load(KEY, 21)) == [None, "c1", "c2", "done"]
        # a unit that ends with tool results is returned whole even over budget
        await append(store, calling("c3", tokens=4), result("c3", 50))
        assert texts(await store.load(KEY, 1)) == [None, "c3"]

    run(check)


def test_the_summary_counts_against_the_load_budget(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        for i in range(3):
            await append(store, user(f"u{i}", 5), assistant(f"a{i}", 5))
        history = await store.load_all(KEY)
        removed = await store.fold(
            KEY,
            epoch=history.epoch,
            summary_version=0,
            through_seq=2,
            summary="they talked",
            summary_tokens=6,
        )
        assert removed == 2
        history = await store.load(KEY, 16)
        assert history.summary == "they talked" and history.summary_tokens == 6
        assert texts(history) == ["u2", "a2"]
        assert texts(await store.load(KEY, 15)) == ["a2"]

    run(check)


def test_caps_drop_the_oldest_first(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        for i in range(4):
            done = await append(store, user(f"u{i}"), assistant(f"a{i}"), max_messages=5)
        assert done.count == 5 and done.dropped == 2
        history = await store.load_all(KEY)
        assert texts(history) == ["a1", "u2", "a2", "u3", "a3"]
        assert history.tokens == 7 + 2 * 12  # token totals follow the trim
        before = texts(await store.load_all(KEY))
        budget = sum(len(e) for e in (b'n9,5,{"role":"user","content":"u4"}',) * 3)
        done = await append(store, user("u4"), assistant("a4"), max_bytes=budget)
        assert 0 < done.bytes <= budget and done.dropped >= 3
        after = texts(await store.load_all(KEY))
        assert after == [*before, "u4", "a4"][-len(after) :] and after[-1] == "a4"
        assert done.count == len(after)

    run(check)


def test_caps_never_separate_a_tool_call_from_its_results(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        await append(store, user("q"), calling("c1", "c2"), result("c1"), result("c2"))
        done = await append(store, assistant("answer"), user("next"), max_messages=4)
        # dropping "q" and the call is enough for the count, but the call's results would
        # be left without it: they go too
        history = await store.load_all(KEY)
        assert not history.messages[0].continuation
        assert done.count == len(history.messages) == 2
        assert texts(history) == ["answer", "next"]
        assert history.tokens == 7 + 5

    run(check)


def test_the_ttl_slides_with_every_turn(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        await append(store, user("one"), ttl=0.6)
        other = SessionKey(KEY.tenant, "team-a/other", KEY.session)
        await append(store, user("elsewhere"), key=other, ttl=0.6)
        await asyncio.sleep(0.4)
        await append(store, user("two"), ttl=0.6)  # refreshed: 0.6s from now
        history = await store.load_all(KEY)
        assert history.expires_in is not None and history.expires_in > 0.45
        await asyncio.sleep(0.35)  # 0.75s after the first turn: alive thanks to the second
        assert texts(await store.load_all(KEY)) == ["one", "two"]
        assert not (await store.load_all(other)).exists  # never refreshed: gone
        assert list(await store.sessions(KEY.tenant, KEY.session)) == [KEY.route]
        await asyncio.sleep(0.4)
        assert not (await store.load_all(KEY)).exists
        assert not (await store.load(KEY, 100)).exists
        assert await store.sessions(KEY.tenant, KEY.session) == {}
        assert await store.delete(KEY.tenant, KEY.session) == 0

    run(check)


def test_fold_removes_exactly_the_planned_prefix(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        for i in range(3):
            await append(store, user(f"u{i}"), assistant(f"a{i}"))
        planned = await store.load_all(KEY)
        # a turn lands while the summarizer works
        await append(store, user("late"), assistant("late answer"))
        removed = await store.fold(
            KEY,
            epoch=planned.epoch,
            summary_version=planned.summary_version,
            through_seq=4,
            summary="S1",
            summary_tokens=3,
        )
        assert removed == 4
        history = await store.load_all(KEY)
        assert texts(history) == ["u2", "a2", "late", "late answer"]
        assert (history.summary, history.summary_tokens, history.summary_version) == ("S1", 3, 1)
        assert history.tokens == 24
        # a second fold planned against the old version is refused, changing nothing
        assert (
            await store.fold(
                KEY,
                epoch=planned.epoch,
                summary_version=0,
                through_seq=8,
                summary="stale",
                summary_tokens=1,
            )
            is None
        )
        assert (await store.load_all(KEY)).summary == "S1"
        done = await append(store, user("more"))
        assert done.summary_tokens == 3 and done.tokens == 29

    run(check)


def test_fold_is_refused_after_the_session_was_erased(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        await append(store, user("old"), assistant("old answer"))
        planned = await store.load_all(KEY)
        assert await store.delete(KEY.tenant, KEY.session) == 1
        await append(store, user("new"), assistant("new answer"))  # same id, new session
        refused = await store.fold(
            KEY,
            epoch=planned.epoch,
            summary_version=0,
            through_seq=2,
            summary="of the old one",
            summary_tokens=4,
        )
        assert refused is None
        history = await store.load_all(KEY)
        assert history.summary is None and texts(history) == ["new", "new answer"]

    run(check)


def test_sessions_are_per_tenant_and_erased_on_every_route(
    run: Callable[[Check], None],
) -> None:
    async def check(store: SessionStore) -> None:
        second_route = SessionKey("team-a", "team-a/other", "s-1")
        other_tenant = SessionKey("team-b", "team-a/chat", "s-1")  # shared route, same id
        await append(store, user("a on chat"))
        await append(store, user("a on other"), key=second_route)
        await append(store, user("b on chat"), key=other_tenant)
        mine = await store.sessions("team-a", "s-1")
        assert sorted(mine) == ["team-a/chat", "team-a/other"]
        assert texts(mine["team-a/chat"]) == ["a on chat"]
        theirs = await store.sessions("team-b", "s-1")
        assert list(theirs) == ["team-a/chat"] and texts(theirs["team-a/chat"]) == ["b on chat"]
        assert await store.sessions("team-c", "s-1") == {}
        assert await store.delete("team-c", "s-1") == 0
        assert await store.delete("team-a", "s-1") == 2
        assert await store.sessions("team-a", "s-1") == {}
        assert not (await store.load_all(second_route)).exists
        assert texts(await store.load_all(other_tenant)) == ["b on chat"]
        assert await store.delete("team-a", "s-1") == 0

    run(check)


def test_concurrent_turns_lose_nothing(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        async def turn(i: int) -> None:
            await append(store, user(f"q{i}"), assistant(f"a{i}"))

        await asyncio.gather(*(turn(i) for i in range(40)))
        history = await store.load_all(KEY)
        assert len(history.messages) == 80
        assert [s.seq for s in history.messages] == list(range(1, 81))
        pairs = [texts(history)[i : i + 2] for i in range(0, 80, 2)]
        assert sorted(pairs) == sorted([f"q{i}", f"a{i}"] for i in range(40))  # whole turns
        assert history.tokens == 40 * 12

    run(check)


def test_messages_round_trip_unchanged(run: Callable[[Check], None]) -> None:
    async def check(store: SessionStore) -> None:
        rich = {
            "role": "user",
            "content": [
                {"type": "text", "text": "zwölf Ünïcödé ✓, commas, and {braces}"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
            "name": "alice",
        }
        await append(store, Entry(rich, 11))
        [stored] = (await store.load_all(KEY)).messages
        assert stored.message == rich and stored.tokens == 11

    run(check)


def test_redis_keys_share_one_cluster_slot_per_session(redis_url: str) -> None:
    async def main() -> None:
        client = aioredis.from_url(redis_url, decode_responses=False)
        try:
            store = RedisSessionStore(client)
            await append(store, user("x"), ttl=120)
            await append(store, user("y"), key=SessionKey("team-a", "team-a/other", "s-1"))
            keys = sorted(k.decode() for k in await client.keys("kanal:ctx:*"))
            assert keys == [
                "kanal:ctx:{team-a:s-1}:r:team-a/chat:h",
                "kanal:ctx:{team-a:s-1}:r:team-a/chat:i",
                "kanal:ctx:{team-a:s-1}:r:team-a/chat:m",
                "kanal:ctx:{team-a:s-1}:r:team-a/other:h",
                "kanal:ctx:{team-a:s-1}:r:team-a/other:i",
                "kanal:ctx:{team-a:s-1}:r:team-a/other:m",
                "kanal:ctx:{team-a:s-1}:routes",
            ]
            for suffix in ("m", "i", "h"):
                ttl = await client.pttl(f"kanal:ctx:{{team-a:s-1}}:r:team-a/chat:{suffix}")
                assert 119_000 < ttl <= 120_000
            # the index lives as long as the longest-lived session it lists
            assert await client.pttl("kanal:ctx:{team-a:s-1}:routes") > 119_000
        finally:
            await client.aclose()

    asyncio.run(main())
