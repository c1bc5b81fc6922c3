"""The summarize function: the context ``strategy: summarize`` fold, out of process.

``POST /`` with ::

    {"model": "<a route's public model>", "summary": "<summary so far>" | null,
     "messages": [<OpenAI chat messages>], "maxWords": 256}

asks that model, through the gateway, to fold the messages into the summary — with the very
instructions and transcript the gateway's in-process summarizer sends
(:func:`kanal.prompts.summary_messages`; ``max_tokens`` = ``maxWords``, ``temperature`` 0) —
and answers ``{"summary": "...", "model": "<upstream model>", "usage": {...}}``.

``model`` defaults to ``$KANAL_MODEL``; ``maxWords`` to 256 (1-4096). Messages need a
``role``; their ``content`` is a string, text parts, or null (tool calls are written as
``[calls name(args)]``). The caller's ``Authorization`` is forwarded, as in every function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from kanal.prompts import summary_messages
from kanal.v1 import gateway_pb2 as pb
from kanal_functions.gateway import CallContext, GatewayClient, GatewayConfig, usage_json
from kanal_functions.runtime import (
    FunctionError,
    Handler,
    Json,
    create_app,
    json_response,
    read_json_object,
    run,
)

NAME = "kanal-fn-summarize"
DEFAULT_MAX_WORDS = 256
MAX_WORDS = 4096
MAX_MESSAGES = 1000
_FIELDS = frozenset({"model", "summary", "messages", "maxWords"})


def _bad(message: str, param: str) -> FunctionError:
    return FunctionError(400, message, param=param, code="invalid_value")


def _messages(value: Any) -> list[Json]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty list of chat messages", "messages")
    if len(value) > MAX_MESSAGES:
        raise _bad(f"messages: at most {MAX_MESSAGES} per request", "messages")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object", where)
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise _bad(f"{where}.role must be a non-empty string", f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(
                f"{where}.content must be a string, a list of parts or null", f"{where}.content"
            )
        if not isinstance(message.get("tool_calls") or [], list):
            raise _bad(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    return value


def chat_request(body: Json, default_model: str | None) -> pb.ChatRequest:
    for key in body:
        if key not in _FIELDS:
            raise _bad(f"unknown field {key}; expected {', '.join(sorted(_FIELDS))}", key)
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise FunctionError(
            400,
            "model is required: the public model of the summarizer's route",
            param="model",
            code="missing_field",
        )
    summary = body.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise _bad("summary must be a string or null", "summary")
    max_words = body.get("maxWords", DEFAULT_MAX_WORDS)
    if isinstance(max_words, bool) or not isinstance(max_words, int):
        raise _bad("maxWords must be an integer", "maxWords")
    if not 1 <= max_words <= MAX_WORDS:
        raise _bad(f"maxWords must be 1-{MAX_WORDS}", "maxWords")
    messages = _messages(body.get("messages"))
    return pb.ChatRequest(
        model=model,
        messages=[
            pb.ChatMessage(role=m["role"], content=m["content"])
            for m in summary_messages(summary, messages, max_words)
        ],
        max_tokens=max_words,
        temperature=0,
    )


def summarize_handler(gateway: GatewayClient, default_model: str | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request, "fields (model, summary, messages, maxWords)")
        chat = chat_request(body, default_model)
        answer, headers = await gateway.chat(chat, CallContext.of(request.headers))
        text = answer.choices[0].message.content.strip() if answer.choices else ""
        if not text:
            raise FunctionError(
                502, f"the summarizer model {chat.model} returned no text", code="empty_summary"
            )
        return json_response(
            {"summary": text, "model": answer.model, "usage": usage_json(answer.usage)}, headers
        )

    return handle


def build(environ: Mapping[str, str]) -> web.Application:
    gateway = GatewayClient(GatewayConfig.from_env(environ))
    handler = summarize_handler(gateway, environ.get("KANAL_MODEL") or None)
    return create_app({"/": handler}, on_cleanup=gateway.close)


def main() -> int:
    return run(NAME, build)


if __name__ == "__main__":
    raise SystemExit(main())
