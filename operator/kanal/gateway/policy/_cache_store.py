"""Where cached responses live: one small interface, in memory or in Redis.

Values are opaque bytes with a time to live. The in-memory store (``kanal up``) is an LRU
bounded by entry count and by total bytes, so it can never grow without limit; the Redis
store leaves eviction to the server (``SET ... PX``; a ``maxmemory-policy`` of
``allkeys-lru`` or ``volatile-lru`` is the usual choice for a cache).

A store never raises for a broken backend: the cache is an optimisation, so an unreachable
Redis means a miss (``get`` returns None) or a skipped write, logged, never a failed call.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis

from kanal.gateway.stores import REDIS_ERRORS

log = logging.getLogger("kanal.gateway.cache")

MEMORY_MAX_ENTRIES = 10_000
"""Default bound on entries of the in-memory store."""
MEMORY_MAX_BYTES = 64 * 1024 * 1024
"""Default bound on the summed value sizes of the in-memory store."""


class CacheStore(Protocol):
    """Opaque values under string keys, each with its own time to live (seconds)."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent, expired or unreachable."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds; False when it was not stored."""
        ...


class MemoryCacheStore:
    """An LRU in this process's memory, bounded by entries and bytes, with per-entry TTL.

    Operations never await, so each one is atomic on the event loop."""

    def __init__(
        self,
        max_entries: int = MEMORY_MAX_ENTRIES,
        max_bytes: int = MEMORY_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a cache store needs room for at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Summed size of the stored values."""
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        if ttl <= 0 or len(value) > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl, value)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # least recently used first
        return True

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)


class RedisCacheStore:
    """``GET`` and ``SET key value PX ttl`` on the shared Redis client (bytes in, bytes out).

    Keys are built by the caller with a ``{tenant}`` hash tag, so one tenant's entries sit in
    one Redis Cluster slot and no command ever spans slots."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(key)
        except REDIS_ERRORS as err:
            log.warning("response cache: Redis GET failed, answering as a miss: %s", err)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        millis = int(ttl * 1000)
        if millis <= 0:
            return False
        try:
            await self.client.set(key, value, px=millis)
        except REDIS_ERRORS as err:
            log.warning("response cache: Redis SET failed, answer not cached: %s", err)
            return False
        return True
