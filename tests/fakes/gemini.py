"""A fake Gemini API: ``POST /v1beta/models/{model}:{method}``.

Methods: ``generateContent``; ``streamGenerateContent`` (``?alt=sse``: ``data: <json>``
frames separated by CRLF CRLF as Google sends them; without ``alt=sse`` one JSON array);
``batchEmbedContents``; ``embedContent``. Key in ``x-goog-api-key`` (or ``?key=``): missing
-> 403 ``PERMISSION_DENIED``, wrong -> 400 ``INVALID_ARGUMENT`` with reason
``API_KEY_INVALID``, as Google answers. Errors are ``{"error": {"code", "message",
"status"}}``; a 429's retry hint is a ``RetryInfo`` detail (``retryDelay: "Ns"``), not a
header. Streamed ``usageMetadata`` is cumulative on every chunk; the last chunk carries
``finishReason``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ._base import DEFAULT_DIMENSIONS, FakeUpstream, Fault, Json, Operation, fake_embedding

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

FINISH_REASONS = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
}

_METHODS = {
    "generateContent": ("chat", False),
    "streamGenerateContent": ("chat", True),
    "batchEmbedContents": ("embeddings", False),
    "embedContent": ("embeddings", False),
}


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


def status_name(code: int) -> str:
    return STATUSES.get(code) or ("INTERNAL" if code >= 500 else "FAILED_PRECONDITION")


class FakeGemini(FakeUpstream):
    provider = "gemini"
    version_path = "/v1beta"
    default_model = "gemini-2.0-flash"

    def operation(self, request: web.Request, body: Any) -> Operation | None:
        prefix = "/v1beta/models/"
        if request.method != "POST" or not request.path.startswith(prefix):
            return None
        model, _, method = request.path[len(prefix) :].rpartition(":")
        found = _METHODS.get(method)
        if found is None or not model:
            return None
        kind, stream = found
        return Operation(kind, model, stream, method)  # type: ignore[arg-type]

    def auth_error(self, request: web.Request, op: Operation) -> web.Response | None:
        if self.api_key is None:
            return None
        sent = request.headers.get("x-goog-api-key") or request.query.get("key")
        if sent == self.api_key:
            return None
        if not sent:
            return self.error_response(
                Fault.status(
                    403,
                    "Method doesn't allow unregistered callers (callers without established "
                    "identity). Please use API Key or other form of API consumer identity to "
                    "call this API.",
                ),
                op,
            )
        payload = {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            }
        }
        return self.json_response(payload, 400)

    def invalid(self, request: web.Request, op: Operation, body: Any) -> web.Response | None:
        problem = None
        if not isinstance(body, dict):
            problem = "Invalid JSON payload received."
        elif op.kind == "chat":
            contents = body.get("contents")
            if not isinstance(contents, list) or not contents:
                problem = "* GenerateContentRequest.contents: contents is not specified"
            else:
                for i, content in enumerate(contents):
                    if content.get("role") not in ("user", "model"):
                        problem = (
                            f"* GenerateContentRequest.contents[{i}].role: "
                            f"Please use a valid role: user, model."
                        )
                    elif not content.get("parts"):
                        problem = (
                            f"* GenerateContentRequest.contents[{i}].parts: contents.parts "
                            "must not be empty."
                        )
                    if problem:
                        break
        elif op.variant == "batchEmbedContents" and not isinstance(body.get("requests"), list):
            problem = "* BatchEmbedContentsRequest.requests: requests is not specified"
        if problem is None:
            return None
        return self.error_response(Fault.status(400, problem), op)

    def _error_payload(self, fault: Fault, status: int) -> Json:
        err: Json = {
            "code": status,
            "message": fault.message or _default_message(status),
            "status": fault.error_type or status_name(status),
        }
        if fault.retry_after is not None:
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{int(fault.retry_after)}s",
                }
            ]
        return {"error": err}

    def error_response(
        self, fault: Fault, op: Operation | None, code: int | None = None
    ) -> web.Response:
        status = code or fault.code
        return self.json_response(self._error_payload(fault, status), status, fault.headers)

    # -- answers ------------------------------------------------------------------------

    def _finish(self, fault: Fault) -> str:
        if fault.finish_reason:
            return FINISH_REASONS.get(fault.finish_reason, fault.finish_reason)
        return "STOP"

    def _usage(self, fault: Fault, completion: int | None = None) -> Json:
        prompt, total_completion = self.usage_numbers(fault)
        done = total_completion if completion is None else completion
        usage: Json = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": done,
            "totalTokenCount": prompt + done,
        }
        if fault.cached_tokens:
            usage["cachedContentTokenCount"] = fault.cached_tokens
        return usage

    def _calls(self, fault: Fault) -> list[Json]:
        parts = []
        for call in fault.tool_calls:
            fc: Json = {"name": call.name, "args": call.arguments}
            if call.id:
                fc["id"] = call.id
            parts.append({"functionCall": fc})
        return parts

    def _response(self, op: Operation, parts: list[Json], finish: str | None, usage: Json) -> Json:
        candidate: Json = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": op.model,
            "responseId": "fake-response-id",
        }

    def success(self, op: Operation, body: Any, fault: Fault) -> Any:
        if op.kind == "embeddings":
            if op.variant == "embedContent":
                text = "".join(p.get("text", "") for p in body["content"]["parts"])
                dims = body.get("outputDimensionality") or DEFAULT_DIMENSIONS
                return {"embedding": {"values": fake_embedding(text, dims)}}
            embeddings = []
            for request in body["requests"]:
                text = "".join(p.get("text", "") for p in request["content"]["parts"])
                dims = request.get("outputDimensionality") or DEFAULT_DIMENSIONS
                embeddings.append({"values": fake_embedding(text, dims)})
            return {"embeddings": embeddings}
        text = self.reply_text(fault)
        parts: list[Json] = [{"text": text}] if text else []
        parts += self._calls(fault)
        response = self._response(op, parts, self._finish(fault), self._usage(fault))
        if op.stream:  # streamGenerateContent without alt=sse: a JSON array of chunks
            return [response]
        return response

    def stream_content_type(self, op: Operation) -> str:
        return "text/event-stream"

    def frames(self, op: Operation, body: Any, fault: Fault) -> list[bytes]:
        pieces = self.pieces(fault)
        calls = self._calls(fault)
        frames: list[bytes] = []
        done = 0
        for i, piece in enumerate(pieces):
            done += len(piece.split())
            last = i == len(pieces) - 1 and not calls
            finish = self._finish(fault) if last else None
            usage = self._usage(fault, None if last else done)
            frames.append(_sse(self._response(op, [{"text": piece}], finish, usage)))
        if calls or not pieces:
            frames.append(_sse(self._response(op, calls, self._finish(fault), self._usage(fault))))
        return frames

    async def _stream(
        self, request: web.Request, op: Operation, body: Any, fault: Fault
    ) -> web.StreamResponse:
        if request.query.get("alt") != "sse":
            return await self._respond(request, op, body, fault)
        return await super()._stream(request, op, body, fault)

    def stream_error_frame(self, fault: Fault, op: Operation) -> bytes:
        return _sse(self._error_payload(fault, fault.code))

    def malformed_json_frame(self, op: Operation) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": \r\n\r\n'


def _default_message(status: int) -> str:
    return {
        400: "Request contains an invalid argument.",
        403: "The caller does not have permission",
        404: "models/unknown is not found for API version v1beta.",
        429: "Resource has been exhausted (e.g. check quota).",
        500: "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
    }.get(status, f"HTTP {status}")
