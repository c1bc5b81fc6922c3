"""What every function shares: OpenAI-shaped JSON errors, reading the JSON body, the app
factory with ``GET /healthz``, and ``serve`` (``$PORT``, default 8080; ``$HOST``, default
all interfaces; SIGTERM and SIGINT stop it after the requests in flight)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from kanal.aio import bound_port, run_until_signalled

log = logging.getLogger("kanal.functions")
Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_PORT = 8080
MAX_BODY_BYTES = 1024 * 1024

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ConfigError(Exception):
    """The function's environment is incomplete or wrong; it does not start."""


class FunctionError(Exception):
    """A request that ends in an error response, as OpenAI shapes it:
    ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or _TYPE_FOR_STATUS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        self.headers = dict(headers or {})

    def body(self) -> Json:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def json_response(body: Json, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def _from_http(exc: web.HTTPException) -> FunctionError:
    codes = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}
    return FunctionError(exc.status, exc.text or exc.reason, code=codes.get(exc.status))


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure of ``handler`` as an OpenAI-shaped JSON error (500 for a bug, logged);
    as a function app's middleware also aiohttp's own (unknown path, wrong method)."""
    try:
        return await handler(request)
    except FunctionError as err:
        return err.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(exc).response()
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return FunctionError(
            500, "internal error in the function", code="internal_error"
        ).response()


def json_errors(handler: Handler) -> Handler:
    """``handler`` answering its failures as JSON errors, in an app of someone else's."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await _json_errors(request, handler)

    return wrapped


async def read_json_object(request: web.Request, what: str) -> Json:
    """The body as a JSON object (an empty body is ``{}``); 400 otherwise, 413 when too big.

    The Content-Type is not checked: ``curl -d`` sends form-encoded by default."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise FunctionError(
            400, f"the body is not valid JSON: {err}", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise FunctionError(
            400, f"the body must be a JSON object of {what}, not {kind}", code="invalid_json"
        )
    return value


async def _healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def create_app(
    routes: Mapping[str, Handler],
    *,
    on_cleanup: Callable[[], Awaitable[None]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """A function's app: ``POST`` handlers by path, ``GET /healthz``, JSON errors."""
    app = web.Application(middlewares=[_json_errors], client_max_size=max_body_bytes)
    app.router.add_get("/healthz", _healthz)
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    if on_cleanup is not None:
        cleanup = on_cleanup

        async def _cleanup(_: web.Application) -> None:
            await cleanup()

        app.on_cleanup.append(_cleanup)
    return app


def listen_address(environ: Mapping[str, str]) -> tuple[str, int]:
    """``$HOST`` (default all interfaces) and ``$PORT`` (default 8080; 0 picks a free one)."""
    host = environ.get("HOST") or "0.0.0.0"  # a container listens on every interface
    raw = environ.get("PORT") or str(DEFAULT_PORT)
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"PORT must be a port number, not {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"PORT must be 0-65535, not {port}")
    return host, port


async def serve_app(
    app: web.Application, host: str, port: int, name: str, stop: asyncio.Event
) -> None:
    """Serves ``app`` until ``stop`` is set."""
    # handler_cancellation: a caller that goes away cancels its gateway call
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.warning("%s listening on http://%s:%d", name, host, bound_port(site))
        await stop.wait()
    finally:
        await runner.cleanup()


def run(name: str, build: Callable[[Mapping[str, str]], web.Application]) -> int:
    """A function's ``main``: configure logging, build the app from the environment, serve.
    A configuration error is printed and exits 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    environ = dict(os.environ)
    try:
        host, port = listen_address(environ)
        app = build(environ)
    except ConfigError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2

    run_until_signalled(lambda stop: serve_app(app, host, port, name, stop))
    return 0
