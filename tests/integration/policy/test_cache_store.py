"""One contract for both response-cache stores: in memory and on the real Redis server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis

from fakes import refused_url
from kanal.gateway.policy.cache import CacheStore, MemoryCacheStore, RedisCacheStore

StoreFactory = Callable[[], contextlib.AbstractAsyncContextManager[CacheStore]]


@pytest.fixture(params=["memory", "redis"])
def open_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "memory":

        @contextlib.asynccontextmanager
        async def memory() -> AsyncIterator[CacheStore]:
            yield MemoryCacheStore()

        return memory
    url: str = request.getfixturevalue("redis_url")

    @contextlib.asynccontextmanager
    async def redis() -> AsyncIterator[CacheStore]:
        client = aioredis.from_url(url, decode_responses=False)
        try:
            yield RedisCacheStore(client)
        finally:
            await client.aclose()

    return redis


def check(
    open_store: StoreFactory, body: Callable[[CacheStore], Coroutine[Any, Any, None]]
) -> None:
    async def main() -> None:
        async with open_store() as store:
            await body(store)

    asyncio.run(asyncio.wait_for(main(), 10))


KEY = "kanal:cache:{team-a}:" + "ab" * 32


def test_missing_key_is_none(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        assert await store.get(KEY) is None

    check(open_store, body)


def test_set_then_get_returns_the_same_bytes(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        value = bytes(range(256)) * 40  # binary, 10 KiB
        assert await store.set(KEY, value, 60)
        assert await store.get(KEY) == value
        assert await store.get(KEY) == value  # reads do not consume

    check(open_store, body)


def test_overwrite_replaces(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        await store.set(KEY, b"one", 60)
        await store.set(KEY, b"two", 60)
        assert await store.get(KEY) == b"two"

    check(open_store, body)


def test_keys_are_independent(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        other = KEY.replace("{team-a}", "{team-b}")
        await store.set(KEY, b"a", 60)
        assert await store.get(other) is None
        await store.set(other, b"b", 60)
        assert (await store.get(KEY), await store.get(other)) == (b"a", b"b")

    check(open_store, body)


def test_entries_expire_after_their_ttl(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        await store.set(KEY, b"short", 0.15)
        await store.set(KEY + "x", b"long", 60)
        assert await store.get(KEY) == b"short"
        await asyncio.sleep(0.3)
        assert await store.get(KEY) is None
        assert await store.get(KEY + "x") == b"long"

    check(open_store, body)


def test_overwrite_restarts_the_ttl(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        await store.set(KEY, b"v1", 0.15)
        await store.set(KEY, b"v2", 60)
        await asyncio.sleep(0.3)
        assert await store.get(KEY) == b"v2"

    check(open_store, body)


def test_no_ttl_means_not_stored(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        assert not await store.set(KEY, b"v", 0)
        assert await store.get(KEY) is None

    check(open_store, body)


def test_many_entries(open_store: StoreFactory) -> None:
    async def body(store: CacheStore) -> None:
        keys = [f"{KEY}:{i}" for i in range(200)]
        for batch in range(0, 200, 50):  # redis-py's default pool holds 100 connections
            chunk = keys[batch : batch + 50]
            await asyncio.gather(*(store.set(k, k.encode(), 60) for k in chunk))
        values = [await store.get(k) for k in keys]
        assert values == [k.encode() for k in keys]

    check(open_store, body)


# -- bounds: the memory store's own; Redis leaves them to the server's maxmemory policy --------


def test_memory_store_bounds_hold_under_churn() -> None:
    async def main() -> None:
        store = MemoryCacheStore(max_entries=50, max_bytes=4096)
        for i in range(2000):
            await store.set(f"k{i}", b"x" * (i % 200), 60)
            assert len(store) <= 50 and store.size_bytes <= 4096
        assert await store.get("k1999") == b"x" * (1999 % 200)

    asyncio.run(main())


def test_redis_keys_carry_the_ttl(redis_url: str) -> None:
    async def main() -> None:
        client = aioredis.from_url(redis_url, decode_responses=False)
        try:
            await RedisCacheStore(client).set(KEY, b"v", 30)
            ttl_ms = await client.pttl(KEY)
            assert 29_000 < ttl_ms <= 30_000
        finally:
            await client.aclose()

    asyncio.run(main())


def test_unreachable_redis_is_a_miss_never_an_error() -> None:
    async def main() -> None:
        url = refused_url("/0").replace("http://", "redis://")
        client = aioredis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            store = RedisCacheStore(client)
            assert await store.get(KEY) is None
            assert not await store.set(KEY, b"v", 60)
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 10))
