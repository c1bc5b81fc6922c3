"""Where shared state lives: Redis when the gateway has a URL, else this process's memory.

Every stateful feature (limits, budgets, sessions, cache) has one store interface with two
implementations — in memory for ``kanal up`` and Redis for replicas — chosen by whether
``stores.redis`` is set. One contract test suite runs against both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kanal.gateway.settings import GatewaySettings

log = logging.getLogger("kanal.gateway")

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
"""What counts as "Redis unreachable": connection, timeout, and any error the server sent."""


@dataclass
class Stores:
    settings: GatewaySettings
    redis: aioredis.Redis | None = None
    """Shared client (bytes in, bytes out); None means in-memory state."""

    @classmethod
    def create(cls, settings: GatewaySettings) -> Stores:
        client = None
        if settings.redis_url:
            # A blocking pool: under a burst, commands wait (up to redis_timeout) for a
            # connection instead of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_timeout,
                socket_timeout=settings.redis_timeout,
                health_check_interval=30,
            )
            client = aioredis.Redis(connection_pool=pool, decode_responses=False)
        return cls(settings=settings, redis=client)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
