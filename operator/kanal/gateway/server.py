"""Runs the gateway's HTTP (and, when available, gRPC) servers in one event loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from kanal.aio import bound_port
from kanal.gateway.grpc_service import start_grpc
from kanal.gateway.http import create_app, create_metrics_app
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
    metrics_port: int | None = None
    """Where ``/metrics`` is served when it has a port of its own."""


@contextlib.asynccontextmanager
async def running_gateway(
    settings: GatewaySettings,
    *,
    extend_app: Callable[[web.Application, Gateway], None] | None = None,
) -> AsyncIterator[RunningGateway]:
    """Starts the servers (port 0 picks a free port) and stops them on exit. ``extend_app``
    may add routes to the HTTP app before it starts (``kanal up``'s prompt functions)."""
    async with contextlib.AsyncExitStack() as stack:  # stops in reverse order of starting
        runtime = Runtime(settings)
        stack.push_async_callback(runtime.close)
        gateway = Gateway(runtime, stores=Stores.create(settings))
        stack.push_async_callback(gateway.close)
        app = create_app(gateway)
        if extend_app is not None:
            extend_app(app, gateway)
        # handler_cancellation: a caller that disconnects cancels its upstream call
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        http_port = await _serve(stack, runner, settings.host, settings.port)
        metrics_port = None
        if settings.metrics_port is not None:
            metrics_runner = web.AppRunner(create_metrics_app(gateway), access_log=None)
            metrics_port = await _serve(stack, metrics_runner, settings.host, settings.metrics_port)
        grpc_server, grpc_port = await start_grpc(gateway, settings.host, settings.grpc_port)
        stack.push_async_callback(grpc_server.stop, 1.0)
        yield RunningGateway(gateway, http_port, grpc_port, metrics_port)


async def _serve(
    stack: contextlib.AsyncExitStack, runner: web.AppRunner, host: str, port: int
) -> int:
    """Starts ``runner`` on host:port (0 picks a free port); returns the bound port."""
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return bound_port(site)
