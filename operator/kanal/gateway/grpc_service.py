"""gRPC ``kanal.v1.Gateway`` on grpc.aio: a thin translation onto :class:`Gateway`.

Requests become the same OpenAI-shaped dicts the HTTP API passes on (so validation,
routing, policy and errors are the HTTP API's), and answers are turned back into the
typed messages of ``proto/kanal/v1/gateway.proto``. The dicts are built field by field
(no descriptor reflection or json_format on the hot path).

Call metadata: ``authorization`` ("Bearer <key>"), ``x-request-id`` (echoed, generated when
absent), ``x-session-id`` (the conversation, for routes with context) and ``x-kanal-cache:
bypass``. Successful calls
answer with initial metadata ``x-request-id``, ``x-kanal-backend`` and the policies' headers
(``x-ratelimit-*``, ``x-kanal-cache``, ...).
Errors end the call with the status mapped from the HTTP status (:func:`status_code`), the
HTTP error message as details, and trailing metadata ``x-request-id``, ``x-kanal-error-type``,
``x-kanal-error-code``, ``x-kanal-error-param`` and ``retry-after`` where they apply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import struct_pb2

from kanal.gateway.errors import GatewayError, bad_request, from_upstream
from kanal.gateway.providers.base import UpstreamError
from kanal.gateway.router import Trace
from kanal.gateway.service import Call, Caller, Gateway, Operation
from kanal.gateway.telemetry import RequestRecord
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

log = logging.getLogger("kanal.gateway.grpc")
Json = dict[str, Any]
Metadata = tuple[tuple[str, str], ...]
Answer = TypeVar("Answer", pb.ChatResponse, pb.EmbedResponse)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # as the HTTP API accepts it

_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,  # an upstream refusing the request itself
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# ChatRequest fields of their own, and what the RPC itself decides: not accepted in `extra`.
_TYPED_CHAT_FIELDS = frozenset({"model", "messages", "max_tokens", "temperature", "top_p", "stop"})
_RPC_CHAT_FIELDS = frozenset({"stream", "stream_options"})

_register: Callable[[pb_grpc.GatewayServicer, Any], None] = pb_grpc.add_GatewayServicer_to_server


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status for an HTTP error status of the gateway."""
    return _STATUS.get(http_status, grpc.StatusCode.INTERNAL)


# -- call metadata ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a call's metadata says."""

    request_id: str
    authorization: str | None
    session_id: str | None
    """``x-session-id``: the conversation this call belongs to (routes with context)."""
    cache_bypass: bool = False
    """``x-kanal-cache: bypass``: do not answer from the response cache."""


def call_info(metadata: Iterable[tuple[str, str | bytes]] | None) -> CallInfo:
    authorization = request_id = session_id = None
    cache_bypass = False
    for key, value in metadata or ():
        if isinstance(value, bytes):  # only ``-bin`` keys carry bytes; none of ours
            continue
        if key == "authorization":
            authorization = value
        elif key == "x-request-id":
            request_id = value
        elif key == "x-session-id":
            session_id = value
        elif key == "x-kanal-cache":
            cache_bypass = value.lower() == "bypass"
    if not request_id or not _REQUEST_ID.match(request_id):
        request_id = "req_" + os.urandom(12).hex()
    return CallInfo(request_id, authorization, session_id, cache_bypass)


def error_metadata(err: GatewayError, request_id: str, prepared: Call | None = None) -> Metadata:
    """Trailing metadata of a failed call (with the policies' headers, e.g. x-ratelimit-*)."""
    items = [(k.lower(), v) for k, v in (prepared.headers.items() if prepared else ())]
    items += [("x-request-id", request_id), ("x-kanal-error-type", err.error_type)]
    if err.code:
        items.append(("x-kanal-error-code", err.code))
    if err.param:
        items.append(("x-kanal-error-param", err.param))
    if err.retry_after is not None:
        items.append(("retry-after", str(max(1, round(err.retry_after)))))
    return tuple(items)


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    err: GatewayError,
    request_id: str,
    prepared: Call | None = None,
) -> NoReturn:
    await context.abort(
        status_code(err.status), err.message, error_metadata(err, request_id, prepared)
    )
    raise AssertionError("ServicerContext.abort returned")  # it always raises


def _internal_error() -> GatewayError:
    return GatewayError(500, "internal error in the gateway", code="internal_error")


def _answer_metadata(request_id: str, trace: Trace, prepared: Call | None = None) -> Metadata:
    extra = tuple(prepared.headers.items()) if prepared is not None else ()
    return (
        *((k.lower(), v) for k, v in extra),
        ("x-request-id", request_id),
        ("x-kanal-backend", trace.backend),
    )


# -- proto -> OpenAI request dicts ------------------------------------------------------


def _json_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number: float = value.number_value
        # Struct has only doubles; integral ones go on as JSON integers (seed, max_*_tokens)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _json_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_json_value(v) for v in value.list_value.values]
    return None  # null_value, or no kind set


def _extra(request: pb.ChatRequest) -> Json:
    if not request.HasField("extra"):
        return {}
    body: Json = {}
    for key, value in request.extra.fields.items():
        if key in _TYPED_CHAT_FIELDS or key == "user":
            raise bad_request(
                f"{key} has its own field in ChatRequest; set it there, not in extra",
                f"extra.{key}",
            )
        if key in _RPC_CHAT_FIELDS:
            raise bad_request(
                f"{key} is decided by the RPC (ChatStream streams; include_usage asks for "
                "usage), not by extra",
                f"extra.{key}",
            )
        body[key] = _json_value(value)
    return body


def _tool_call_dict(call: pb.ToolCall) -> Json:
    return {
        "id": call.id,
        "type": call.type or "function",
        "function": {"name": call.function.name, "arguments": call.function.arguments},
    }


def _message_dict(message: pb.ChatMessage) -> Json:
    out: Json = {"role": message.role}
    if message.HasField("content"):
        out["content"] = message.content
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [_tool_call_dict(c) for c in message.tool_calls]
    return out


def chat_body(request: pb.ChatRequest, *, stream: bool) -> Json:
    """The OpenAI chat completion body of ``request`` (``stream`` for ChatStream)."""
    body = _extra(request)
    body["model"] = request.model
    body["messages"] = [_message_dict(m) for m in request.messages]
    if request.HasField("max_tokens"):
        body["max_tokens"] = request.max_tokens
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    if request.HasField("top_p"):
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.HasField("user"):
        body["user"] = request.user
    if stream:
        body["stream"] = True
        if request.include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def embed_body(request: pb.EmbedRequest) -> Json:
    body: Json = {"model": request.model, "input": list(request.input)}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    return body


# -- OpenAI response dicts -> proto -----------------------------------------------------


def _usage(usage: Json | None) -> pb.Usage | None:
    if not usage:
        return None
    return pb.Usage(
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        total_tokens=usage.get("total_tokens"),
    )


def _tool_call(call: Json) -> pb.ToolCall:
    function = call.get("function")
    return pb.ToolCall(
        id=call.get("id"),
        type=call.get("type"),
        index=call.get("index"),
        function=pb.FunctionCall(name=function.get("name"), arguments=function.get("arguments"))
        if function
        else None,
    )


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones, joined
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return str(content)


def _message(message: Json) -> pb.ChatMessage:
    tool_calls = message.get("tool_calls")
    return pb.ChatMessage(
        role=message.get("role"),
        content=_text(message.get("content")),
        name=message.get("name"),
        tool_call_id=message.get("tool_call_id"),
        tool_calls=[_tool_call(c) for c in tool_calls] if tool_calls else None,
    )


def chat_response(result: Json) -> pb.ChatResponse:
    return pb.ChatResponse(
        id=result.get("id"),
        model=result.get("model"),
        created=int(result.get("created") or 0),
        choices=[
            pb.ChatChoice(
                index=choice.get("index"),
                message=_message(choice.get("message") or {}),
                finish_reason=choice.get("finish_reason"),
            )
            for choice in result.get("choices") or ()
        ],
        usage=_usage(result.get("usage")),
    )


def _chunk_choice(choice: Json) -> pb.ChatChunkChoice:
    delta = choice.get("delta") or {}
    tool_calls = delta.get("tool_calls")
    return pb.ChatChunkChoice(
        index=choice.get("index"),
        delta=pb.ChatDelta(
            role=delta.get("role"),
            content=_text(delta.get("content")),
            tool_calls=[_tool_call(c) for c in tool_calls] if tool_calls else None,
        ),
        finish_reason=choice.get("finish_reason"),
    )


def chat_chunk(chunk: Json) -> pb.ChatChunk:
    choices = chunk.get("choices")
    return pb.ChatChunk(
        id=chunk.get("id"),
        model=chunk.get("model"),
        created=int(chunk.get("created") or 0),
        choices=[_chunk_choice(c) for c in choices] if choices else None,
        usage=_usage(chunk.get("usage")),
    )


def embed_response(result: Json) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        model=result.get("model"),
        embeddings=[
            pb.Embedding(index=item.get("index"), values=item.get("embedding"))
            for item in result.get("data") or ()
        ],
        usage=_usage(result.get("usage")),
    )


# -- the service ------------------------------------------------------------------------


class GatewayService(pb_grpc.GatewayServicer):
    """``kanal.v1.Gateway`` onto the protocol-agnostic :class:`Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def _begin(
        self, operation: str, info: CallInfo, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> RequestRecord:
        carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
        return self.gateway.telemetry.begin("grpc", operation, info.request_id, carrier)

    def _prepare(self, op: Operation, caller: Caller, body: Json, info: CallInfo) -> Call:
        if info.session_id is not None and not _REQUEST_ID.match(info.session_id):
            raise GatewayError(
                400,
                "x-session-id must be 1-128 characters of letters, digits and ._:-",
                code="invalid_session_id",
                param="x-session-id",
            )
        return self.gateway.prepare(
            op,
            caller,
            body,
            request_id=info.request_id,
            session_id=info.session_id,
            cache_bypass=info.cache_bypass,
        )

    async def Chat(
        self,
        request: pb.ChatRequest,
        context: grpc.aio.ServicerContext[pb.ChatRequest, pb.ChatResponse],
    ) -> pb.ChatResponse:
        return await self._unary(
            "Chat",
            Operation.CHAT,
            lambda: chat_body(request, stream=False),
            chat_response,
            context,
        )

    async def ChatStream(
        self,
        request: pb.ChatRequest,
        context: grpc.aio.ServicerContext[pb.ChatRequest, pb.ChatChunk],
    ) -> None:
        metadata = context.invocation_metadata()
        call = call_info(metadata)
        record = self._begin("chat", call, metadata)
        record.stream = True
        try:
            await self._chat_stream(request, context, call, record)
        except asyncio.CancelledError:
            record.disconnected = True
            raise
        finally:
            self.gateway.telemetry.finish(record)

    async def _chat_stream(
        self,
        request: pb.ChatRequest,
        context: grpc.aio.ServicerContext[pb.ChatRequest, pb.ChatChunk],
        call: CallInfo,
        record: RequestRecord,
    ) -> None:
        trace = record.trace
        prepared: Call | None = None
        try:
            record.caller = caller = await self.gateway.authenticate(call.authorization)
            body = chat_body(request, stream=True)
            record.call = prepared = self._prepare(Operation.CHAT, caller, body, call)
            chunks = await self.gateway.open_stream(prepared, trace)
            record.first_chunk = time.perf_counter()
        except GatewayError as err:
            record.error = err
            await _abort(context, err, call.request_id, prepared)
        except Exception:
            log.exception("ChatStream failed (request %s)", call.request_id)
            record.error = _internal_error()
            await _abort(context, record.error, call.request_id)
        wants_usage = request.include_usage
        # context.write (not an async generator): a cancelled call raises CancelledError right
        # here, and the finally below closes the upstream stream at once
        try:
            await context.send_initial_metadata(_answer_metadata(call.request_id, trace, prepared))
            async for chunk in chunks:
                if not wants_usage and not chunk.get("choices") and "usage" in chunk:
                    continue  # we asked the provider for usage; the caller did not
                await context.write(chat_chunk(chunk))
        except UpstreamError as err:
            # after the first chunk a failure ends the stream, never switches backends
            record.error = from_upstream(err, model=prepared.route.model)
            record.in_stream_error = True
            await _abort(context, record.error, call.request_id)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("ChatStream failed mid-stream (request %s)", call.request_id)
            record.error, record.in_stream_error = _internal_error(), True
            await _abort(context, record.error, call.request_id)
        finally:
            await _aclose(chunks)

    async def Embed(
        self,
        request: pb.EmbedRequest,
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> pb.EmbedResponse:
        return await self._unary(
            "Embed", Operation.EMBEDDINGS, lambda: embed_body(request), embed_response, context
        )

    async def _unary(
        self,
        rpc: str,
        op: Operation,
        body_of: Callable[[], Json],
        answer_of: Callable[[Json], Answer],
        context: grpc.aio.ServicerContext[Any, Answer],
    ) -> Answer:
        """One unary RPC: the request as an OpenAI body, the gateway's answer as a message."""
        metadata = context.invocation_metadata()
        call = call_info(metadata)
        record = self._begin(op.value, call, metadata)
        trace = record.trace
        prepared: Call | None = None
        try:
            record.caller = caller = await self.gateway.authenticate(call.authorization)
            body = body_of()
            record.call = prepared = self._prepare(op, caller, body, call)
            answer = answer_of(await self.gateway.call(prepared, trace))
            await context.send_initial_metadata(_answer_metadata(call.request_id, trace, prepared))
            return answer
        except GatewayError as err:
            record.error = err
            await _abort(context, err, call.request_id, prepared)
        except asyncio.CancelledError:
            record.disconnected = True
            raise
        except Exception:
            log.exception("%s failed (request %s)", rpc, call.request_id)
            record.error = _internal_error()
            await _abort(context, record.error, call.request_id)
        finally:
            self.gateway.telemetry.finish(record)

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        call = call_info(context.invocation_metadata())
        try:
            caller = await self.gateway.authenticate(call.authorization)
        except GatewayError as err:
            await _abort(context, err, call.request_id)
        await context.send_initial_metadata((("x-request-id", call.request_id),))
        return pb.ListModelsResponse(
            models=[pb.Model(id=r.model, owned_by=r.namespace) for r in self.gateway.models(caller)]
        )


async def _aclose(chunks: AsyncIterator[Json]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc(gateway: Gateway, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Starts ``kanal.v1.Gateway`` on host:port (0 picks a free port); returns the server
    and the bound port. Stop it with ``await server.stop(grace)``."""
    server = grpc.aio.server(
        options=[
            # the HTTP API's body limit; larger requests end with RESOURCE_EXHAUSTED
            ("grpc.max_receive_message_length", gateway.runtime.settings.max_body_bytes),
            # a port taken by another process is an error, not a silently shared port
            ("grpc.so_reuseport", 0),
        ]
    )
    _register(GatewayService(gateway), server)
    bound = server.add_insecure_port(_address(host, port))
    if not bound:
        raise OSError(f"gRPC: could not bind {_address(host, port)}")
    await server.start()
    return server, int(bound)
