"""The functions' client of the kanal gateway: ``kanal.v1.Gateway`` over gRPC.

**Credentials**, first that applies: the caller's own ``Authorization`` header (so the
gateway applies the caller's tenant, key and access rules), else ``$KANAL_API_KEY``, else the
token in ``$KANAL_TOKEN_FILE`` — by default the pod's projected ServiceAccount token
(``/var/run/secrets/kubernetes.io/serviceaccount/token``, re-read as the kubelet rotates it),
which the gateway checks with a TokenReview — else none (``kanal up`` without key Secrets
admits anonymous callers).

**Errors**: a failed call becomes the HTTP error the gateway's HTTP API would have answered.
The gRPC status is mapped back (the inverse of ``kanal.gateway.grpc_service.status_code``),
refined by the trailers ``x-kanal-error-code`` (413 vs 400; 502 vs 503) and carrying
``x-kanal-error-type``, ``x-kanal-error-param`` and ``retry-after``. A call that never
reached a kanal gateway (nothing listening, no kanal trailers) is 503 ``gateway_unavailable``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc
from kanal_functions.runtime import ConfigError, FunctionError, Json

SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_TARGET = "127.0.0.1:9090"
TOKEN_REREAD_SECONDS = 60.0

# protoc's stub class is untyped; its .pyi types the messages, not the stub
_new_stub: Callable[[grpc.aio.Channel], Any] = pb_grpc.GatewayStub

# gRPC status -> HTTP status, as the gateway maps HTTP to gRPC (kanal.gateway.grpc_service)
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# codes that share a gRPC status with another HTTP status
_HTTP_STATUS_BY_CODE = {
    "request_too_large": 413,
    "upstream_error": 502,
    "upstream_auth_failed": 502,
}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    target: str = DEFAULT_TARGET
    """host:port of the gateway's gRPC port (``$KANAL_GATEWAY_GRPC``)."""
    api_key: str | None = None
    """``$KANAL_API_KEY``: used when the caller sends no Authorization header."""
    token_file: str | None = None
    """``$KANAL_TOKEN_FILE``, default the ServiceAccount token when it exists."""
    timeout: float | None = None
    """``$KANAL_TIMEOUT`` seconds: deadline of one gateway call (none by default)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewayConfig:
        token_file = environ.get("KANAL_TOKEN_FILE") or (
            SA_TOKEN_FILE if os.path.exists(SA_TOKEN_FILE) else None
        )
        timeout: float | None = None
        if raw := environ.get("KANAL_TIMEOUT"):
            try:
                timeout = float(raw)
            except ValueError:
                timeout = -1.0
            if not timeout > 0:
                raise ConfigError(f"KANAL_TIMEOUT must be a positive number of seconds: {raw!r}")
        return cls(
            target=environ.get("KANAL_GATEWAY_GRPC") or DEFAULT_TARGET,
            api_key=environ.get("KANAL_API_KEY") or None,
            token_file=token_file,
            timeout=timeout,
        )


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a function forwards of its caller's request."""

    authorization: str | None = None
    session_id: str | None = None
    request_id: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> CallContext:
        return cls(
            headers.get("Authorization") or None,
            headers.get("X-Session-Id") or None,
            headers.get("X-Request-Id") or None,
        )


def http_error(err: grpc.aio.AioRpcError, target: str) -> FunctionError:
    """The HTTP error for a failed gateway call."""
    trailers = {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}
    error_type = trailers.get("x-kanal-error-type")
    code = trailers.get("x-kanal-error-code")
    headers = {}
    if request_id := trailers.get("x-request-id"):
        headers["x-request-id"] = request_id
    if retry_after := trailers.get("retry-after"):
        headers["Retry-After"] = retry_after
    details = err.details() or err.code().name
    if error_type is None:  # not an answer of kanal's: the call never got there, or gRPC itself
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            return FunctionError(
                503,
                f"the kanal gateway at {target} is unreachable: {details}",
                code="gateway_unavailable",
                headers=headers,
            )
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's message size limit
            return FunctionError(413, details, code="request_too_large", headers=headers)
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return FunctionError(
                504,
                f"the kanal gateway did not answer in time: {details}",
                code="deadline_exceeded",
            )
    status = _HTTP_STATUS_BY_CODE.get(code or "") or _HTTP_STATUS.get(err.code(), 500)
    return FunctionError(
        status,
        details,
        code=code,
        param=trailers.get("x-kanal-error-param"),
        error_type=error_type,
        headers=headers,
    )


def usage_json(usage: pb.Usage) -> Json:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _answer_headers(metadata: Any) -> dict[str, str]:
    keep = {"x-request-id", "x-kanal-backend"}
    return {k: v for k, v in (metadata or ()) if k in keep and isinstance(v, str)}


class ChatStream:
    """A ChatStream call whose first chunk has arrived (so errors before any output are
    ordinary HTTP errors); iterate for the rest. ``headers``: the gateway's answer headers."""

    def __init__(
        self,
        call: Any,
        first: pb.ChatChunk | None,
        headers: dict[str, str],
        target: str,
    ) -> None:
        self._call = call
        self._first = first
        self.headers = headers
        self._target = target

    async def __aiter__(self) -> AsyncIterator[pb.ChatChunk]:
        if self._first is None:
            return
        yield self._first
        while True:
            try:
                chunk = await self._call.read()
            except grpc.aio.AioRpcError as err:
                raise http_error(err, self._target) from None
            if chunk is grpc.aio.EOF:
                return
            yield chunk

    def cancel(self) -> None:
        self._call.cancel()


class GatewayClient:
    """One gRPC channel to the gateway, opened on first use (inside the serving loop)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._token: tuple[float, str | None] | None = None

    @property
    def target(self) -> str:
        return self.config.target

    def _gateway(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.config.target)
            self._stub = _new_stub(self._channel)
        return self._stub

    def _own_token(self) -> str | None:
        path = self.config.token_file
        if path is None:
            return None
        now = time.monotonic()
        if self._token is None or self._token[0] <= now:
            try:
                with open(path, encoding="utf-8") as file:
                    token: str | None = file.read().strip() or None
            except OSError:
                token = None
            self._token = (now + TOKEN_REREAD_SECONDS, token)
        return self._token[1]

    def authorization(self, caller: str | None) -> str | None:
        """The Authorization the gateway sees: the caller's, else the function's own."""
        if caller:
            return caller
        if self.config.api_key:
            return f"Bearer {self.config.api_key}"
        token = self._own_token()
        return f"Bearer {token}" if token else None

    def metadata(self, context: CallContext) -> tuple[tuple[str, str], ...]:
        items = []
        if authorization := self.authorization(context.authorization):
            items.append(("authorization", authorization))
        if context.session_id:
            items.append(("x-session-id", context.session_id))
        if context.request_id:
            items.append(("x-request-id", context.request_id))
        return tuple(items)

    async def chat(
        self, request: pb.ChatRequest, context: CallContext
    ) -> tuple[pb.ChatResponse, dict[str, str]]:
        """One chat completion and the gateway's answer headers."""
        call = self._gateway().Chat(
            request, metadata=self.metadata(context), timeout=self.config.timeout
        )
        try:
            response = await call
            headers = _answer_headers(await call.initial_metadata())
        except grpc.aio.AioRpcError as err:
            raise http_error(err, self.config.target) from None
        return response, headers

    async def chat_stream(self, request: pb.ChatRequest, context: CallContext) -> ChatStream:
        """Opens a ChatStream and waits for its first chunk (or its error)."""
        call = self._gateway().ChatStream(
            request, metadata=self.metadata(context), timeout=self.config.timeout
        )
        try:
            first = await call.read()
            headers = _answer_headers(await call.initial_metadata())
        except grpc.aio.AioRpcError as err:
            raise http_error(err, self.config.target) from None
        except BaseException:
            call.cancel()
            raise
        return ChatStream(
            call, None if first is grpc.aio.EOF else first, headers, self.config.target
        )

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()
