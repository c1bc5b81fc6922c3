"""Contract of the rate-limit stores: the same suite against memory and the real Redis.

``at(offset)`` gives a store whose "now" is the real now plus ``offset`` seconds (a shifted
clock for memory, a shifted server TIME for Redis), so the window can be crossed without
waiting; one test also waits for a short real window."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from kanal.gateway.policy._limits_store import (
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    scope_keys,
)
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores

SLACK = 0.5
"""Redis time keeps running during a test: durations are compared within this."""


class Bench:
    def __init__(self, client: aioredis.Redis | None, window: float) -> None:
        self.client = client
        self.window = window
        self.offset = 0.0
        self.memory = MemoryLimitStore(window, clock=lambda: time.monotonic() + self.offset)

    def at(self, offset: float = 0.0) -> LimitStore:
        if self.client is not None:
            return RedisLimitStore(self.client, self.window, shift=offset)
        self.offset = offset
        return self.memory


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@contextlib.asynccontextmanager
async def bench(url: str | None, window: float = 60.0) -> AsyncIterator[Bench]:
    # the gateway's own client (its blocking connection pool), not a bare from_url
    client = Stores.create(GatewaySettings(redis_url=url)).redis if url else None
    try:
        yield Bench(client, window)
    finally:
        if client is not None:
            await client.aclose()


def run(url: str | None, test: Callable[[Bench], Awaitable[None]], window: float = 60.0) -> None:
    async def main() -> None:
        async with bench(url, window) as b:
            await test(b)

    asyncio.run(main())


def near(value: float, expected: float) -> bool:
    return abs(value - expected) <= SLACK


# -- requests -------------------------------------------------------------------------------


def test_requests_slide_out_of_the_window_one_by_one(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        s = "r|key|a"
        first = await b.at(0).acquire(s, "m1", rpm=3, tpm=0, tokens=0)
        assert first.admitted and first.requests == 1 and near(first.reset, 60)
        assert (await b.at(0).acquire(s, "m2", rpm=3, tpm=0, tokens=0)).requests == 2
        third = await b.at(30).acquire(s, "m3", rpm=3, tpm=0, tokens=0)
        assert third.admitted and third.requests == 3 and near(third.reset, 30)
        refused = await b.at(45).acquire(s, "m4", rpm=3, tpm=0, tokens=0)
        assert not refused.admitted and refused.exceeded == "requests"
        assert refused.requests == 3 and near(refused.retry_after, 15)
        # m1 and m2 left at 60: two free slots, m3 still counted
        again = await b.at(61).acquire(s, "m5", rpm=3, tpm=0, tokens=0)
        assert again.admitted and again.requests == 2 and near(again.reset, 29)
        assert (await b.at(61).acquire(s, "m6", rpm=3, tpm=0, tokens=0)).admitted
        late = await b.at(62).acquire(s, "m7", rpm=3, tpm=0, tokens=0)
        assert not late.admitted and near(late.retry_after, 28)  # m3 leaves at 90

    run(store_url, test)


def test_an_entry_leaves_exactly_one_window_after_admission(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        assert (await b.at(0).acquire("s", "m1", rpm=1, tpm=0, tokens=0)).admitted
        assert not (await b.at(59).acquire("s", "m2", rpm=1, tpm=0, tokens=0)).admitted
        assert (await b.at(60.6).acquire("s", "m3", rpm=1, tpm=0, tokens=0)).admitted

    run(store_url, test)


def test_a_short_real_window_expires_while_we_wait(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        assert (await store.acquire("s", "m1", rpm=1, tpm=10, tokens=5)).admitted
        refused = await store.acquire("s", "m2", rpm=1, tpm=10, tokens=5)
        assert not refused.admitted and 0 < refused.retry_after <= 0.3
        await asyncio.sleep(0.35)
        fresh = await store.acquire("s", "m3", rpm=1, tpm=10, tokens=5)
        assert fresh.admitted and fresh.requests == 1 and fresh.tokens == 5

    run(store_url, test, window=0.3)


def test_scopes_count_separately(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        assert (await store.acquire("r|key|a", "m1", rpm=1, tpm=0, tokens=0)).admitted
        assert (await store.acquire("r|key|b", "m2", rpm=1, tpm=0, tokens=0)).admitted
        assert (await store.acquire("r2|key|a", "m3", rpm=1, tpm=0, tokens=0)).admitted
        assert not (await store.acquire("r|key|a", "m4", rpm=1, tpm=0, tokens=0)).admitted

    run(store_url, test)


def test_concurrent_acquires_admit_exactly_the_limit(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        verdicts = await asyncio.gather(
            *(store.acquire("s", f"m{i}", rpm=40, tpm=1000, tokens=20) for i in range(150))
        )
        admitted = [v for v in verdicts if v.admitted]
        assert len(admitted) == 40
        assert sorted(v.requests for v in admitted) == list(range(1, 41))
        assert {v.exceeded for v in verdicts if not v.admitted} == {"requests"}
        tokens = await asyncio.gather(
            *(store.acquire("t", f"m{i}", rpm=0, tpm=1000, tokens=30) for i in range(150))
        )
        assert sum(v.admitted for v in tokens) == 33  # 33 * 30 <= 1000 < 34 * 30

    run(store_url, test)


# -- tokens ---------------------------------------------------------------------------------


def test_tokens_retry_after_waits_for_enough_old_entries_to_leave(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        for offset, member in ((0, "m1"), (10, "m2"), (20, "m3")):
            v = await b.at(offset).acquire("s", member, rpm=0, tpm=100, tokens=30)
            assert v.admitted
        assert v.tokens == 90
        small = await b.at(25).acquire("s", "x", rpm=0, tpm=100, tokens=10)
        assert small.admitted and small.tokens == 100
        one = await b.at(26).acquire("s", "y", rpm=0, tpm=100, tokens=25)
        assert not one.admitted and one.exceeded == "tokens" and one.tokens == 100
        assert near(one.retry_after, 34)  # m1 (30 tokens) leaves at 60
        two = await b.at(26).acquire("s", "z", rpm=0, tpm=100, tokens=55)
        assert not two.admitted and near(two.retry_after, 44)  # m1 + m2 leave by 70
        assert (await b.at(60.6).acquire("s", "w", rpm=0, tpm=100, tokens=25)).admitted

    run(store_url, test)


def test_requests_are_checked_before_tokens(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        assert (await store.acquire("s", "m1", rpm=1, tpm=10, tokens=10)).admitted
        refused = await store.acquire("s", "m2", rpm=1, tpm=10, tokens=10)
        assert refused.exceeded == "requests"

    run(store_url, test)


def test_settle_swaps_the_reservation_for_real_usage_once(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        assert (await store.acquire("s", "m1", rpm=0, tpm=100, tokens=80)).tokens == 80
        assert not (await store.acquire("s", "m2", rpm=0, tpm=100, tokens=30)).admitted
        assert await store.settle("s", "m1", 10) is True
        assert await store.settle("s", "m1", 90) is False  # idempotent: nothing changes
        assert await store.settle("s", "unknown", 5) is False
        v = await store.acquire("s", "m3", rpm=0, tpm=100, tokens=30)
        assert v.admitted and v.tokens == 40

    run(store_url, test)


def test_settling_above_the_reservation_counts_the_excess(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        assert (await store.acquire("s", "m1", rpm=0, tpm=100, tokens=10)).admitted
        assert await store.settle("s", "m1", 95)
        refused = await store.acquire("s", "m2", rpm=0, tpm=100, tokens=10)
        assert not refused.admitted and refused.tokens == 95

    run(store_url, test)


def test_settle_after_the_entry_left_the_window_changes_nothing(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        assert (await b.at(0).acquire("s", "m1", rpm=0, tpm=100, tokens=60)).admitted
        assert await b.at(61).settle("s", "m1", 100) is False
        v = await b.at(61).acquire("s", "m2", rpm=0, tpm=100, tokens=100)
        assert v.admitted and v.tokens == 100

    run(store_url, test)


def test_without_a_token_limit_nothing_is_weighed(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        store = b.at(0)
        v = await store.acquire("s", "m1", rpm=5, tpm=0, tokens=0)
        assert v.admitted and v.tokens == 0
        assert await store.settle("s", "m1", 50) is False

    run(store_url, test)


# -- what only one of them has -------------------------------------------------------------


def test_redis_keys_share_one_hash_tag_and_expire(redis_url: str) -> None:
    async def test(b: Bench) -> None:
        client = b.client
        assert client is not None
        scope = "team-a/chat|key|key:team-a/k1"
        await b.at(0).acquire(scope, "m1", rpm=5, tpm=100, tokens=7)
        z, w = scope_keys(scope)
        tags = {re.search(r"\{([^}]*)\}", k).group(1) for k in (z, w)}  # type: ignore[union-attr]
        assert tags == {scope}
        for key in (z, w):
            assert 0 < await client.pttl(key) <= 61_000
        assert await client.hget(w, "#") == b"7"
        assert set(await client.keys("*")) == {z.encode(), w.encode()}

    run(redis_url, test)


def test_redis_keys_vanish_one_window_after_the_last_request(redis_url: str) -> None:
    async def test(b: Bench) -> None:
        client = b.client
        assert client is not None
        await b.at(0).acquire("s", "m1", rpm=5, tpm=100, tokens=7)
        assert await client.dbsize() == 2
        await asyncio.sleep(1.2)  # window 0.1 s + 1 s of grace
        assert await client.dbsize() == 0

    run(redis_url, test, window=0.1)


def test_memory_store_forgets_idle_scopes() -> None:
    async def main() -> None:
        now = [0.0]
        store = MemoryLimitStore(60.0, clock=lambda: now[0])
        for i in range(100):
            await store.acquire(f"s{i}", "m", rpm=1, tpm=10, tokens=1)
        assert len(store) == 100
        now[0] = 61.0
        store.sweep()
        assert len(store) == 0

    asyncio.run(main())
