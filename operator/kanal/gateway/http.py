"""OpenAI-compatible HTTP on aiohttp: a thin translation onto :class:`Gateway`."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from kanal.gateway.errors import GatewayError, from_upstream
from kanal.gateway.providers.base import UpstreamError
from kanal.gateway.service import Call, Caller, Gateway, Operation
from kanal.gateway.telemetry import RequestRecord, exposition
from kanal.gateway.usage_api import usage_summary

log = logging.getLogger("kanal.gateway.http")
Json = dict[str, Any]

GATEWAY = web.AppKey("gateway", Gateway)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SESSION_ID = _REQUEST_ID
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return "req_" + os.urandom(12).hex()


def _error_response(err: GatewayError, request_id: str, call: Call | None = None) -> web.Response:
    extra = call.headers if call is not None else {}
    return web.Response(
        body=err.json_bytes(),
        status=err.status,
        content_type="application/json",
        headers={**extra, "x-request-id": request_id, **err.headers()},
    )


def _session_id(request: web.Request) -> str | None:
    value = request.headers.get("x-session-id")
    if value is None:
        return None
    if not _SESSION_ID.match(value):
        raise GatewayError(
            400,
            "X-Session-Id must be 1-128 characters of letters, digits and ._:-",
            code="invalid_session_id",
            param="X-Session-Id",
        )
    return value


def _cache_bypass(request: web.Request) -> bool:
    if request.headers.get("x-kanal-cache", "").lower() == "bypass":
        return True
    return "no-cache" in request.headers.get("cache-control", "").lower()


async def _read_json(request: web.Request) -> Json:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise GatewayError(
            413,
            f"request body is larger than the gateway accepts ({exc.text or 'too large'})",
            code="request_too_large",
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    return body


def _sse(chunk: Json) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _overhead_ms(record: RequestRecord) -> str:
    return f"{record.overhead * 1000:.3f}"


class Handlers:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _caller(self, request: web.Request) -> Caller:
        return await self.gateway.authenticate(request.headers.get("Authorization"))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._invoke(request, Operation.CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._invoke(request, Operation.COMPLETION)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._invoke(request, Operation.EMBEDDINGS)

    async def _invoke(self, request: web.Request, op: Operation) -> web.StreamResponse:
        request_id = _request_id(request)
        telemetry = self.gateway.telemetry
        record = telemetry.begin("http", op.value, request_id, request.headers)
        trace = record.trace
        call: Call | None = None
        try:
            record.caller = caller = await self._caller(request)
            body = await _read_json(request)
            record.call = call = self.gateway.prepare(
                op,
                caller,
                body,
                request_id=request_id,
                session_id=_session_id(request),
                cache_bypass=_cache_bypass(request),
            )
            record.stream = call.stream
            if call.stream:
                return await self._stream(request, call, record)
            result = await self.gateway.call(call, trace)
        except GatewayError as err:
            record.error = err
            return _error_response(err, request_id, call)
        except asyncio.CancelledError:  # the caller went away (handler_cancellation)
            record.disconnected = True
            raise
        finally:
            telemetry.finish(record)
        return web.Response(
            body=orjson.dumps(result),
            content_type="application/json",
            headers={
                **call.headers,
                "x-request-id": request_id,
                "x-kanal-overhead-ms": _overhead_ms(record),
                "x-kanal-backend": trace.backend,
                "x-kanal-attempts": str(trace.attempts),
            },
        )

    async def _stream(
        self, request: web.Request, call: Call, record: RequestRecord
    ) -> web.StreamResponse:
        options = call.body.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        trace = record.trace
        chunks = await self.gateway.open_stream(call, trace)  # errors -> JSON reply
        record.first_chunk = time.perf_counter()
        response = web.StreamResponse(
            headers={
                **_SSE_HEADERS,
                **call.headers,
                "x-request-id": call.request_id,
                "x-kanal-overhead-ms": _overhead_ms(record),
                "x-kanal-backend": trace.backend,
                "x-kanal-attempts": str(trace.attempts),
            }
        )
        try:
            await response.prepare(request)
            await self._relay(response, chunks, wants_usage, record)
        except (ConnectionResetError, OSError):
            record.disconnected = True
            log.info("client went away mid-stream (request %s)", call.request_id)
        finally:
            await _aclose(chunks)
        return response

    async def _relay(
        self,
        response: web.StreamResponse,
        chunks: AsyncIterator[Json],
        wants_usage: bool,
        record: RequestRecord,
    ) -> None:
        try:
            async for chunk in chunks:
                if not chunk.get("choices") and "usage" in chunk and not wants_usage:
                    continue  # we asked the provider for usage; the caller did not
                await response.write(_sse(chunk))
        except UpstreamError as err:
            # after the first byte a failure is reported in-stream, never by switching backends
            model = record.call.route.model if record.call is not None else ""
            record.error, record.in_stream_error = from_upstream(err, model=model), True
            await response.write(_sse(record.error.body()))
            return
        await response.write(_DONE)

    async def _authenticated_json(
        self, request: web.Request, answer: Callable[[Caller], Awaitable[Json]]
    ) -> web.Response:
        """The read-style endpoints: authenticate, answer as JSON, errors in OpenAI's shape."""
        request_id = _request_id(request)
        try:
            data = await answer(await self._caller(request))
        except GatewayError as err:
            return _error_response(err, request_id)
        return web.json_response(data, dumps=_dumps, headers={"x-request-id": request_id})

    async def models(self, request: web.Request) -> web.Response:
        async def answer(caller: Caller) -> Json:
            routes = self.gateway.models(caller)
            return {"object": "list", "data": [_model_entry(r.model, r.namespace) for r in routes]}

        return await self._authenticated_json(request, answer)

    async def model(self, request: web.Request) -> web.Response:
        async def answer(caller: Caller) -> Json:
            route = self.gateway.resolve(caller, request.match_info["model"])
            return _model_entry(route.model, route.namespace)

        return await self._authenticated_json(request, answer)

    async def session(self, request: web.Request) -> web.Response:
        """GET /v1/sessions/{id}: the caller's own conversation, per route."""

        async def answer(caller: Caller) -> Json:
            return await self.gateway.context.read_session(caller, _path_session_id(request))

        return await self._authenticated_json(request, answer)

    async def delete_session(self, request: web.Request) -> web.Response:
        """DELETE /v1/sessions/{id}: erase the caller's own conversation on every route."""

        async def answer(caller: Caller) -> Json:
            session_id = _path_session_id(request)
            erased = await self.gateway.context.delete_session(caller, session_id)
            return {"id": session_id, "object": "session.deleted", "deleted": erased > 0}

        return await self._authenticated_json(request, answer)

    async def spend(self, request: web.Request) -> web.Response:
        """GET /v1/spend: current spend of the caller's key, namespace and routes."""

        async def answer(caller: Caller) -> Json:
            return await self.gateway.budget.spend(caller)

        return await self._authenticated_json(request, answer)

    async def usage(self, request: web.Request) -> web.Response:
        """GET /v1/usage: usage of the caller's namespace, grouped (see usage_api)."""

        async def answer(caller: Caller) -> Json:
            return await usage_summary(self.gateway, caller, request.query)

        return await self._authenticated_json(request, answer)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.gateway.runtime.ready:
            return web.Response(status=503, text="no routing snapshot loaded yet")
        return web.Response(text=f"ok {self.gateway.runtime.snapshot.version}")

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus text, unauthenticated like /healthz (labels are bounded
        and carry no key ids or caller strings; restrict who can scrape with the network)."""
        scraped = exposition(self.gateway.telemetry)
        if scraped is None:
            return web.Response(status=404, text="metrics are off")
        body, content_type = scraped
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def not_found(self, request: web.Request) -> web.Response:
        err = GatewayError(404, f"unknown path {request.method} {request.path}", code="unknown_url")
        return _error_response(err, _request_id(request))


def _path_session_id(request: web.Request) -> str:
    value = request.match_info["session_id"]
    if not _SESSION_ID.match(value):
        raise GatewayError(
            400,
            "session id must be 1-128 characters of letters, digits and ._:-",
            code="invalid_session_id",
        )
    return value


def _model_entry(model: str, namespace: str) -> Json:
    return {"id": model, "object": "model", "created": 0, "owned_by": namespace}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _aclose(chunks: AsyncIterator[Json]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def create_metrics_app(gateway: Gateway) -> web.Application:
    """``/metrics`` (and ``/healthz``) alone, for a port of their own: scrapers reach it,
    callers of the gateway do not (route names and traffic of every tenant are in it)."""
    app = web.Application()
    handlers = Handlers(gateway)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app


def create_app(gateway: Gateway) -> web.Application:
    """The callers' API; ``/metrics`` too unless settings.metrics_port gives it its own."""
    app = web.Application(client_max_size=gateway.runtime.settings.max_body_bytes)
    app[GATEWAY] = gateway
    handlers = Handlers(gateway)
    app.router.add_post("/v1/chat/completions", handlers.chat)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/v1/models/{model:.+}", handlers.model)
    app.router.add_get("/v1/sessions/{session_id}", handlers.session)
    app.router.add_delete("/v1/sessions/{session_id}", handlers.delete_session)
    app.router.add_get("/v1/spend", handlers.spend)
    app.router.add_get("/healthz", handlers.healthz)
    if gateway.runtime.settings.metrics_port is None:
        app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/v1/usage", handlers.usage)
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app
