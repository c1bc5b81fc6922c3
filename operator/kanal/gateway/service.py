"""The protocol-agnostic gateway: who is calling, which route, and running the call.

HTTP (``http.py``) and gRPC (``grpc_service.py``) are thin translations onto this, so both
have the same authentication, routing and errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kanal.gateway import validate
from kanal.gateway.errors import GatewayError
from kanal.gateway.providers.base import (
    CallOptions,
    FailureKind,
    ProviderAdapter,
    Upstream,
    UpstreamError,
)
from kanal.gateway.router import Router, Trace
from kanal.gateway.runtime import BackendState, Runtime
from kanal.snapshot import ApiKey, RouteConfig, Snapshot, Target

log = logging.getLogger("kanal.gateway")
Json = dict[str, Any]


class Operation(Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDINGS = "embeddings"


_VALIDATE: dict[Operation, Callable[[Json], str]] = {
    Operation.CHAT: validate.chat,
    Operation.COMPLETION: validate.completion,
    Operation.EMBEDDINGS: validate.embeddings,
}


def _unary(
    op: Operation, adapter: ProviderAdapter
) -> Callable[[Upstream, Json, CallOptions], Awaitable[Json]]:
    if op is Operation.CHAT:
        return adapter.chat
    if op is Operation.COMPLETION:
        return adapter.completion
    return adapter.embeddings


def _streaming(
    op: Operation, adapter: ProviderAdapter
) -> Callable[[Upstream, Json, CallOptions], AsyncIterator[Json]]:
    if op is Operation.CHAT:
        return adapter.chat_stream
    if op is Operation.COMPLETION:
        return adapter.completion_stream
    raise GatewayError(400, "embeddings cannot be streamed", param="stream")


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller; its namespace is its tenant."""

    tenant: str
    key: str | None = None
    """Name of the API key Secret that admitted it (never the key itself)."""


class Gateway:
    def __init__(self, runtime: Runtime, router: Router | None = None) -> None:
        self.runtime = runtime
        self.router = router or Router(runtime)
        self._keys: dict[str, ApiKey] = {}
        self._keys_of: Snapshot | None = None

    # -- callers and routes ---------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Caller:
        """``Authorization: Bearer <key>`` -> Caller, or 401."""
        snapshot = self.runtime.snapshot
        if self._keys_of is not snapshot:
            self._keys = {k.sha256: k for k in snapshot.api_keys}
            self._keys_of = snapshot
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if token:
            # hashing first means the lookup compares digests, not the secret itself
            found = self._keys.get(hashlib.sha256(token.encode()).hexdigest())
            if found is not None:
                return Caller(found.namespace, found.secret)
        anonymous = self.runtime.settings.anonymous_tenant
        if anonymous is not None and not snapshot.api_keys:
            return Caller(anonymous)
        if not token:
            raise GatewayError(
                401,
                "missing API key: send Authorization: Bearer <key>",
                code="missing_api_key",
            )
        raise GatewayError(401, "incorrect API key provided", code="invalid_api_key")

    def resolve(self, caller: Caller, model: str) -> RouteConfig:
        route = self.runtime.snapshot.by_tenant_model.get((caller.tenant, model))
        if route is None:
            raise GatewayError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return route

    def models(self, caller: Caller) -> list[RouteConfig]:
        return self.runtime.snapshot.models_for(caller.tenant)

    # -- calls ----------------------------------------------------------------------------

    def prepare(self, op: Operation, caller: Caller, body: Json) -> RouteConfig:
        """Validate the body and find its route (400/404 before any upstream work)."""
        return self.resolve(caller, _VALIDATE[op](body))

    async def call(self, op: Operation, route: RouteConfig, body: Json, trace: Trace) -> Json:
        async def attempt(state: BackendState, target: Target, timeout: float) -> Json:
            upstream_body = {**body, "model": target.model}
            return await _unary(op, state.adapter)(
                state.upstream, upstream_body, CallOptions(timeout=timeout)
            )

        return await self.router.run(route, attempt, trace)

    async def open_stream(
        self, op: Operation, route: RouteConfig, body: Json, trace: Trace
    ) -> AsyncIterator[Json]:
        """Routes until one backend produced its first chunk, then relays that backend only.

        A failure after the first chunk is raised from the iterator (the protocol layer
        reports it in-stream); it never switches backends mid-answer."""
        idle = self.runtime.settings.stream_idle_timeout
        chosen: list[BackendState] = []

        async def attempt(
            state: BackendState, target: Target, timeout: float
        ) -> tuple[Json, AsyncIterator[Json]]:
            upstream_body = {**body, "model": target.model}
            chunks = _streaming(op, state.adapter)(
                state.upstream, upstream_body, CallOptions(timeout=timeout, idle_timeout=idle)
            )
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError(
                    FailureKind.PROTOCOL, f"backend {state.config.id}: stream ended before any data"
                ) from None
            except BaseException:
                await _close(chunks)
                raise
            chosen.append(state)
            return first, chunks

        first, chunks = await self.router.run(route, attempt, trace, stream=True)
        return self._relay(first, chunks, trace, chosen[-1])

    async def _relay(
        self, first: Json, chunks: AsyncIterator[Json], trace: Trace, state: BackendState
    ) -> AsyncIterator[Json]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except UpstreamError as err:
            state.record_failure(err, asyncio.get_running_loop().time(), self.runtime.settings)
            raise
        finally:
            trace.done()
            await _close(chunks)


async def _close(chunks: AsyncIterator[Json]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken upstream stream: nothing left to report
            log.debug("error closing upstream stream", exc_info=True)
