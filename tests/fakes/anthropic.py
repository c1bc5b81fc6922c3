"""A fake Anthropic Messages API: ``POST /v1/messages``.

Checks what the real API checks first: ``x-api-key`` (when the fake has a key),
``anthropic-version``, ``max_tokens``, roles ``user``/``assistant`` only, ``system`` as a
string or text blocks. Errors are ``{"type": "error", "error": {"type", "message"},
"request_id"}``; 529 is ``overloaded_error``. Streams are ``event: <type>`` +
``data: <json>`` frames: ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
``message_delta`` (stop_reason, cumulative output_tokens), ``message_stop``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ._base import FakeUpstream, Fault, Json, Operation

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}


def _event(kind: str, payload: Json) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


class FakeAnthropic(FakeUpstream):
    provider = "anthropic"
    version_path = "/v1"
    default_model = "claude-sonnet-4-5"

    def operation(self, request: web.Request, body: Any) -> Operation | None:
        if request.path != "/v1/messages" or request.method != "POST":
            return None
        stream = isinstance(body, dict) and body.get("stream") is True
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        return Operation("chat", model, stream)

    def auth_error(self, request: web.Request, op: Operation) -> web.Response | None:
        if self.api_key is None or request.headers.get("x-api-key") == self.api_key:
            return None
        return self.error_response(Fault.status(401, "invalid x-api-key"), op)

    def invalid(self, request: web.Request, op: Operation, body: Any) -> web.Response | None:
        problem = None
        if "anthropic-version" not in request.headers:
            problem = "anthropic-version: header is required"
        elif not isinstance(body, dict):
            problem = "There was an issue with your request body: expected a JSON object"
        elif not isinstance(body.get("max_tokens"), int):
            problem = "max_tokens: Field required"
        elif not body.get("model"):
            problem = "model: Field required"
        elif not isinstance(body.get("messages"), list) or not body["messages"]:
            problem = "messages: at least one message is required"
        elif "system" in body and not isinstance(body["system"], str | list):
            problem = "system: Input should be a valid string or list"
        else:
            for i, msg in enumerate(body["messages"]):
                if msg.get("role") not in ("user", "assistant"):
                    problem = (
                        f"messages.{i}.role: Input should be 'user' or 'assistant'"
                        f" (got {msg.get('role')!r}; use the top-level system parameter)"
                    )
                    break
        if problem is None:
            return None
        return self.error_response(Fault.status(400, problem), op)

    def error_response(
        self, fault: Fault, op: Operation | None, code: int | None = None
    ) -> web.Response:
        status = code or fault.code
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["retry-after"] = str(int(fault.retry_after))
        payload = {
            "type": "error",
            "error": {
                "type": fault.error_type or error_type(status),
                "message": fault.message or _default_message(status),
            },
            "request_id": "req_fake",
        }
        return self.json_response(payload, status, headers)

    # -- answers ------------------------------------------------------------------------

    def _stop_reason(self, fault: Fault) -> str:
        if fault.finish_reason:
            return STOP_REASONS.get(fault.finish_reason, fault.finish_reason)
        return "tool_use" if fault.tool_calls else "end_turn"

    def _usage(self, fault: Fault) -> Json:
        prompt, completion = self.usage_numbers(fault)
        return {
            "input_tokens": prompt,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": fault.cached_tokens,
            "output_tokens": completion,
        }

    def _tool_blocks(self, fault: Fault) -> list[Json]:
        return [
            {
                "type": "tool_use",
                "id": call.id or f"toolu_fake_{i}",
                "name": call.name,
                "input": call.arguments,
            }
            for i, call in enumerate(fault.tool_calls)
        ]

    def success(self, op: Operation, body: Any, fault: Fault) -> Any:
        content: list[Json] = []
        text = self.reply_text(fault)
        if text:
            content.append({"type": "text", "text": text})
        content += self._tool_blocks(fault)
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": op.model,
            "content": content,
            "stop_reason": self._stop_reason(fault),
            "stop_sequence": None,
            "usage": self._usage(fault),
        }

    def frames(self, op: Operation, body: Any, fault: Fault) -> list[bytes]:
        usage = self._usage(fault)
        start_usage = {**usage, "output_tokens": 1}
        message: Json = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": op.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        frames = [_event("message_start", {"type": "message_start", "message": message})]
        index = 0
        pieces = self.pieces(fault)
        if pieces:
            frames.append(
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            frames.append(_event("ping", {"type": "ping"}))
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece}
                frames.append(
                    _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                )
            frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        for block in self._tool_blocks(fault):
            start = {**block, "input": {}}
            frames.append(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
            )
            args = orjson.dumps(block["input"]).decode()
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": part}
                frames.append(
                    _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            frames.append(
                _event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
            index += 1
        frames.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason(fault), "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        frames.append(_event("message_stop", {"type": "message_stop"}))
        return frames

    def stream_error_frame(self, fault: Fault, op: Operation) -> bytes:
        kind = fault.error_type or error_type(fault.code)
        message = fault.message or _default_message(fault.code)
        return _event("error", {"type": "error", "error": {"type": kind, "message": message}})

    def malformed_json_frame(self, op: Operation) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'


def _default_message(status: int) -> str:
    return {
        400: "Invalid request.",
        401: "invalid x-api-key",
        403: "Your API key does not have permission to use the specified resource.",
        404: "The requested resource could not be found.",
        413: "Request exceeds the maximum allowed number of bytes.",
        429: "Number of request tokens has exceeded your per-minute rate limit.",
        500: "Internal server error",
        529: "Overloaded",
    }.get(status, f"HTTP {status}")
