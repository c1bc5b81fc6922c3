"""``kanal up``: the compiler and the gateway in one process, from manifest files.

No cluster: the files are the very manifests one would ``kubectl apply``. Edits are picked
up while running; a file that stops validating leaves the last good routes serving.

Routes with ``prompt.expose.function: true`` are also served as their prompt functions at
``POST /functions/{namespace}/{route}``: the very handler of the standalone prompt function
(``kanal_functions.prompt``), calling this gateway over its own gRPC port, with the route's
prompt looked up in the current snapshot on every request (so edits apply at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from kanal import manifests
from kanal.aio import run_until_signalled
from kanal.api import Secret
from kanal.gateway.server import running_gateway
from kanal.gateway.service import Gateway
from kanal.gateway.settings import GatewaySettings
from kanal.snapshot import RouteConfig, Snapshot, compile_snapshot
from kanal_functions.gateway import GatewayClient, GatewayConfig
from kanal_functions.prompt import PromptTarget, prompt_handler
from kanal_functions.runtime import FunctionError, json_errors

log = logging.getLogger("kanal.up")
ANONYMOUS_TENANT = "default"
FUNCTIONS_PATH = "/functions/{namespace}/{route}"


def exposes_function(route: RouteConfig) -> bool:
    prompt = route.prompt
    return prompt is not None and prompt.published and prompt.template is not None


def _loopback(host: str, port: int) -> str:
    """Where this process reaches its own gRPC port."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PromptFunctions:
    """The prompt functions of ``kanal up``: ``POST /functions/{namespace}/{route}``."""

    def __init__(self) -> None:
        self.client = GatewayClient(GatewayConfig(target=""))  # the caller's credentials only
        self._gateway: Gateway | None = None

    def install(self, app: web.Application, gateway: Gateway) -> None:
        self._gateway = gateway
        app.router.add_post(FUNCTIONS_PATH, json_errors(prompt_handler(self.target, self.client)))

    def connect(self, host: str, grpc_port: int) -> None:
        self.client.config = GatewayConfig(target=_loopback(host, grpc_port))

    def target(self, request: web.Request) -> PromptTarget:
        if self._gateway is None or not self.client.target:
            raise FunctionError(503, "kanal up is still starting", code="starting")
        route_id = f"{request.match_info['namespace']}/{request.match_info['route']}"
        route = self._gateway.runtime.snapshot.routes.get(route_id)
        if route is None or not exposes_function(route):
            raise FunctionError(
                404,
                f"no prompt function {route_id}: kanal up serves the LlmRoutes with "
                "prompt.expose.function: true",
                code="function_not_found",
            )
        assert route.prompt is not None
        return PromptTarget(route.id, route.model, route.prompt)


def function_paths(snapshot: Snapshot) -> list[str]:
    return [
        f"/functions/{r.id}"
        for r in sorted(snapshot.routes.values(), key=lambda r: r.id)
        if exposes_function(r)
    ]


def env_secret(spec: str, environ: Mapping[str, str]) -> Secret:
    """``NAME:KEY=ENVVAR`` -> a Secret ``NAME`` (namespace default) whose KEY is $ENVVAR.

    Lets a key reach ``kanal up`` without being written to any file."""
    target, sep, variable = spec.partition("=")
    name, colon, key = target.partition(":")
    if not (sep and colon and name and key and variable):
        raise ValueError(f"--secret {spec!r}: expected NAME:KEY=ENVVAR")
    value = environ.get(variable)
    if not value:
        raise ValueError(f"--secret {name}:{key}: environment variable {variable} is not set")
    return Secret.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "stringData": {key: value},
        }
    )


def build_snapshot(
    paths: Sequence[str | Path], extra_secrets: Sequence[Secret] = ()
) -> tuple[Snapshot | None, list[str]]:
    """Snapshot from files, plus what is wrong with them; None when a file is invalid."""
    loaded = manifests.load(paths)
    errors = [str(e) for e in loaded.errors]
    if not loaded.files:
        errors.append(f"no manifest files found in {', '.join(map(str, paths))}")
    if errors:
        return None, errors
    snapshot = compile_snapshot(loaded.backends, loaded.routes, [*loaded.secrets, *extra_secrets])
    return snapshot, [f"{p.kind} {p.id}: {p.reason}: {p.message}" for p in snapshot.problems]


def _fingerprint(paths: Sequence[str | Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in manifests.expand(paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


async def serve(
    paths: Sequence[str | Path],
    settings: GatewaySettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    poll_seconds: float = 1.0,
    extra_secrets: Sequence[Secret] = (),
) -> int:
    snapshot, problems = build_snapshot(paths, extra_secrets)
    for problem in problems:
        log.error("%s", problem)
    if snapshot is None:
        return 1
    # callers without a key are admitted only while the files hold no API key Secret
    settings = replace(settings, anonymous_tenant=ANONYMOUS_TENANT)
    if not snapshot.api_keys:
        log.warning(
            "no API key Secrets in the files: every caller is admitted as tenant %r",
            ANONYMOUS_TENANT,
        )
    stop = stop or asyncio.Event()
    functions = PromptFunctions()
    try:
        async with running_gateway(settings, extend_app=functions.install) as running:
            functions.connect(settings.host, running.grpc_port)
            await running.gateway.runtime.apply(snapshot)
            routes = ", ".join(sorted(r.model for r in snapshot.routes.values())) or "none"
            log.warning(
                "kanal up: HTTP on http://%s:%d/v1, gRPC on %s:%s; snapshot %s; models: %s",
                settings.host,
                running.http_port,
                settings.host,
                running.grpc_port,
                snapshot.version,
                routes,
            )
            _log_functions(snapshot, settings.host, running.http_port)
            if ready is not None:
                ready.set()
            seen = _fingerprint(paths)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_seconds)
                now = _fingerprint(paths)
                if now == seen:
                    continue
                seen = now
                fresh, problems = build_snapshot(paths, extra_secrets)
                for problem in problems:
                    log.error("%s", problem)
                if fresh is None:
                    log.error(
                        "keeping snapshot %s: fix the files above",
                        running.gateway.runtime.snapshot.version,
                    )
                    continue
                await running.gateway.runtime.apply(fresh)
                log.warning("applied snapshot %s", fresh.version)
                _log_functions(fresh, settings.host, running.http_port)
    finally:
        await functions.client.close()  # after the servers: no call in flight
    return 0


def _log_functions(snapshot: Snapshot, host: str, port: int) -> None:
    for path in function_paths(snapshot):
        log.warning("prompt function: POST http://%s:%d%s", host, port, path)


def run(
    paths: Sequence[str | Path], settings: GatewaySettings, extra_secrets: Sequence[Secret] = ()
) -> int:
    """Blocking entry point for the CLI; Ctrl-C stops cleanly."""
    return run_until_signalled(
        lambda stop: serve(paths, settings, stop=stop, extra_secrets=extra_secrets)
    )
