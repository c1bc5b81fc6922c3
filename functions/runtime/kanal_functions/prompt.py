"""The prompt function: an ``LlmRoute.prompt`` as its own REST API.

``POST /`` with a JSON object of variables -> the route's template rendered with them
(:func:`kanal.prompts.render`: unknown variables, values that are not text and missing
required variables are 400 naming the variable) -> a Chat call to the gateway with the
route's public model (the route's ``prompt.system`` first, then the rendered template as the
user message) -> ::

    {"id": "chatcmpl-...", "route": "default/ticket-summary", "model": "<upstream model>",
     "output": "<the answer>", "finish_reason": "stop",
     "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}

**Streaming** when asked with ``?stream=true`` or ``Accept: text/event-stream`` (not in the
body: every body key is a variable): Server-Sent Events ``data: {"output": "<next text>"}``,
then ``data: {"id", "model", "finish_reason", "usage"}``, then ``data: [DONE]``. An error
before the first chunk is an ordinary JSON error with its status; one after it is sent as
``data: {"error": {...}}`` and the stream ends without ``[DONE]``.

The caller's ``Authorization``, ``X-Session-Id`` and ``X-Request-Id`` are forwarded;
responses carry the gateway's ``x-request-id`` and ``x-kanal-backend``.

Environment (as the operator's Knative Service sets it, ``kanal.controller.builders``):
``KANAL_PROMPT`` (the route's ``spec.prompt`` as JSON), ``KANAL_MODEL`` (default
``KANAL_ROUTE``), ``KANAL_ROUTE``, ``KANAL_ROUTE_NAMESPACE`` (default ``default``),
``KANAL_GATEWAY_GRPC``, and the credentials of :mod:`kanal_functions.gateway`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
import pydantic
from aiohttp import web

from kanal.api.llmroute import Prompt
from kanal.prompts import VariableError, render
from kanal.v1 import gateway_pb2 as pb
from kanal_functions.gateway import CallContext, GatewayClient, GatewayConfig, usage_json
from kanal_functions.runtime import (
    ConfigError,
    FunctionError,
    Handler,
    Json,
    create_app,
    json_response,
    read_json_object,
    run,
)

NAME = "kanal-fn-prompt"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class PromptTarget:
    """One published prompt: which route, which public model, which prompt."""

    route: str
    """namespace/name of the LlmRoute."""
    model: str
    """The route's public model name, sent to the gateway."""
    prompt: Prompt


Resolver = Callable[[web.Request], PromptTarget]


def target_from_env(environ: Mapping[str, str]) -> PromptTarget:
    raw = environ.get("KANAL_PROMPT")
    if not raw:
        raise ConfigError("KANAL_PROMPT is not set (the route's spec.prompt as JSON)")
    try:
        prompt = Prompt.model_validate(json.loads(raw))
    except (ValueError, pydantic.ValidationError) as err:
        raise ConfigError(f"KANAL_PROMPT is not a valid LlmRoute prompt: {err}") from None
    if prompt.template is None:
        raise ConfigError("KANAL_PROMPT has no template: there is nothing to render")
    route = environ.get("KANAL_ROUTE") or ""
    model = environ.get("KANAL_MODEL") or route
    if not model:
        raise ConfigError("set KANAL_MODEL (the route's public model) or KANAL_ROUTE")
    namespace = environ.get("KANAL_ROUTE_NAMESPACE") or "default"
    return PromptTarget(f"{namespace}/{route or model}", model, prompt)


def wants_stream(request: web.Request) -> bool:
    flag = request.query.get("stream")
    if flag is not None:
        return flag.lower() in ("", "1", "true", "yes")
    return "text/event-stream" in request.headers.get("Accept", "")


def chat_request(target: PromptTarget, values: Json, *, stream: bool) -> pb.ChatRequest:
    try:
        rendered = render(target.prompt, values)
    except VariableError as err:
        raise FunctionError(400, err.message, param=err.param, code=err.code) from None
    return pb.ChatRequest(
        model=target.model,
        messages=[
            pb.ChatMessage(role=m["role"], content=m["content"]) for m in rendered.messages()
        ],
        include_usage=stream,
    )


def _sse(event: Json) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _stream(
    request: web.Request, gateway: GatewayClient, chat: pb.ChatRequest, context: CallContext
) -> web.StreamResponse:
    stream = await gateway.chat_stream(chat, context)  # errors before any output: plain JSON
    response = web.StreamResponse(headers={**SSE_HEADERS, **stream.headers})
    try:
        await response.prepare(request)
        last: Json = {}
        async for chunk in stream:
            last["id"], last["model"] = chunk.id, chunk.model
            for choice in chunk.choices:
                if choice.delta.content:
                    await response.write(_sse({"output": choice.delta.content}))
                if choice.finish_reason:
                    last["finish_reason"] = choice.finish_reason
            if chunk.HasField("usage"):
                last["usage"] = usage_json(chunk.usage)
        await response.write(_sse(last))
        await response.write(DONE)
    except FunctionError as err:  # the gateway failed mid-stream
        await response.write(_sse(err.body()))
    finally:
        stream.cancel()  # a no-op after the end; stops the gateway call if the caller left
    return response


def prompt_handler(resolve: Resolver, gateway: GatewayClient) -> Handler:
    """The handler of a published prompt (``resolve`` says which), standalone or in kanal up."""

    async def handle(request: web.Request) -> web.StreamResponse:
        target = resolve(request)
        values = await read_json_object(request, "variables")
        stream = wants_stream(request)
        chat = chat_request(target, values, stream=stream)
        context = CallContext.of(request.headers)
        if stream:
            return await _stream(request, gateway, chat, context)
        answer, headers = await gateway.chat(chat, context)
        choice = answer.choices[0] if answer.choices else None
        body: Json = {
            "id": answer.id,
            "route": target.route,
            "model": answer.model,
            "output": choice.message.content if choice is not None else "",
            "finish_reason": choice.finish_reason if choice is not None else None,
            "usage": usage_json(answer.usage),
        }
        return json_response(body, headers)

    return handle


def build(environ: Mapping[str, str]) -> web.Application:
    target = target_from_env(environ)
    gateway = GatewayClient(GatewayConfig.from_env(environ))
    return create_app({"/": prompt_handler(lambda _: target, gateway)}, on_cleanup=gateway.close)


def main() -> int:
    return run(NAME, build)


if __name__ == "__main__":
    raise SystemExit(main())
