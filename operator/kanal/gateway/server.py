"""Runs the gateway's HTTP (and, when available, gRPC) servers in one event loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from kanal.gateway.grpc_service import start_grpc
from kanal.gateway.http import create_app
from kanal.gateway.runtime import Runtime
from kanal.gateway.service import Gateway
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores

log = logging.getLogger("kanal.gateway")


@dataclass
class RunningGateway:
    gateway: Gateway
    http_port: int
    grpc_port: int


@contextlib.asynccontextmanager
async def running_gateway(
    settings: GatewaySettings,
    *,
    extend_app: Callable[[web.Application, Gateway], None] | None = None,
) -> AsyncIterator[RunningGateway]:
    """Starts the servers (port 0 picks a free port) and stops them on exit. ``extend_app``
    may add routes to the HTTP app before it starts (``kanal up``'s prompt functions)."""
    runtime = Runtime(settings)
    gateway = Gateway(runtime, stores=Stores.create(settings))
    app = create_app(gateway)
    if extend_app is not None:
        extend_app(app, gateway)
    # handler_cancellation: a caller that disconnects cancels its upstream call
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    http_port = _bound_port(site)
    try:
        grpc_server, grpc_port = await start_grpc(gateway, settings.host, settings.grpc_port)
    except BaseException:
        await runner.cleanup()
        await gateway.close()
        await runtime.close()
        raise
    try:
        yield RunningGateway(gateway, http_port, grpc_port)
    finally:
        await grpc_server.stop(grace=1.0)
        await runner.cleanup()
        await gateway.close()
        await runtime.close()


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the (asyncio or uvloop) server here
    sockets = getattr(server, "sockets", None)
    if not sockets:
        raise RuntimeError("HTTP server has no listening socket")
    return int(sockets[0].getsockname()[1])
