"""Running a server process's event loop: the one place that picks uvloop and turns SIGINT
and SIGTERM into a clean stop (``kanal up``, ``kanal gateway`` and the functions), and reads
the port an aiohttp site bound."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")


def bound_port(site: web.TCPSite) -> int:
    """The port ``site`` listens on (port 0 asks the OS for a free one)."""
    server = site._server  # aiohttp keeps the (asyncio or uvloop) server here
    sockets = getattr(server, "sockets", None)
    if not sockets:
        raise RuntimeError("HTTP server has no listening socket")
    return int(sockets[0].getsockname()[1])


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``serve(stop)`` to its end on uvloop (plain asyncio where uvloop is missing);
    SIGINT or SIGTERM sets ``stop``."""

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await serve(stop)

    try:
        import uvloop
    except ImportError:  # uvloop is a dependency, but not on every OS
        return asyncio.run(main())
    return uvloop.run(main())
