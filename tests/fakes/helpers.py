"""Small helpers for tests that talk to the fakes: a bounded ``run``, a refused port, and
a kanal ``Upstream`` with its own aiohttp session."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import aiohttp

from kanal.gateway.providers.base import Upstream

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """``asyncio.run`` bounded by ``timeout`` seconds (pytest-asyncio is not used here)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def unused_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def refused_url(path: str = "/v1") -> str:
    """A base URL whose connections are refused."""
    return f"http://127.0.0.1:{unused_port()}{path}"


@contextlib.asynccontextmanager
async def kanal_upstream(
    base_url: str,
    *,
    api_key: str | None = None,
    api_version: str | None = None,
    backend_id: str = "tests/fake",
    connect_timeout: float = 2.0,
) -> AsyncIterator[Upstream]:
    """An :class:`Upstream` for ``base_url`` with a fresh session, closed afterwards."""
    async with aiohttp.ClientSession() as session:
        yield Upstream(
            backend_id=backend_id,
            base_url=base_url,
            session=session,
            api_key=api_key,
            api_version=api_version,
            connect_timeout=connect_timeout,
        )
