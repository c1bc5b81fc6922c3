"""A fake OpenAI API, which also answers Azure OpenAI's deployment URLs.

OpenAI: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``GET /v1/models``; key as ``Authorization: Bearer``. Azure:
``POST /openai/deployments/{deployment}/{chat/completions|completions|embeddings}
?api-version=...``; key in ``api-key``; the deployment is the model; Azure's error JSON
(``{"error": {"code": "429", "message"}}``) and its leading ``prompt_filter_results`` chunk.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from ._base import DEFAULT_DIMENSIONS, FakeUpstream, Fault, Json, Operation, fake_embedding

_OPS = {
    "chat/completions": "chat",
    "completions": "completion",
    "embeddings": "embeddings",
}


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class FakeOpenAI(FakeUpstream):
    provider = "openai"
    version_path = "/v1"
    default_model = "gpt-4o-mini"

    @property
    def azure_url(self) -> str:
        """The base URL for an ``azure-openai`` backend (the resource endpoint)."""
        return self.root

    # -- routing ------------------------------------------------------------------------

    def operation(self, request: web.Request, body: Any) -> Operation | None:
        path = request.path
        stream = isinstance(body, dict) and body.get("stream") is True
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        if path.startswith("/v1/"):
            if path == "/v1/models" and request.method == "GET":
                return Operation("models", "")
            kind = _OPS.get(path[4:])
            if kind is None or request.method != "POST":
                return None
            return Operation(kind, model, stream)  # type: ignore[arg-type]
        if path.startswith("/openai/deployments/") and request.method == "POST":
            deployment, _, rest = path[len("/openai/deployments/") :].partition("/")
            kind = _OPS.get(rest)
            if kind is None or not deployment or "api-version" not in request.query:
                return None
            return Operation(kind, deployment, stream, "azure")  # type: ignore[arg-type]
        return None

    def auth_error(self, request: web.Request, op: Operation) -> web.Response | None:
        if self.api_key is None:
            return None
        if op.variant == "azure":
            if request.headers.get("api-key") == self.api_key:
                return None
            return self.error_response(
                Fault.status(
                    401,
                    "Access denied due to invalid subscription key or wrong API endpoint. "
                    "Make sure to provide a valid key for an active subscription and use a "
                    "correct regional API endpoint for your resource.",
                ),
                op,
            )
        sent = request.headers.get("Authorization", "")
        if sent == f"Bearer {self.api_key}":
            return None
        token = sent.removeprefix("Bearer ")
        masked = f"{token[:3]}***{token[-4:]}" if len(token) > 8 else "***"
        message = (
            f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
            if token
            else "You didn't provide an API key."
        )
        return self.error_response(
            Fault.status(401, message, error_type="invalid_request_error"), op, code=401
        )

    def invalid(self, request: web.Request, op: Operation, body: Any) -> web.Response | None:
        problem = None
        if op.kind == "models":
            return None
        if not isinstance(body, dict):
            problem = "We could not parse the JSON body of your request."
        elif op.variant != "azure" and not body.get("model"):
            problem = "you must provide a model parameter"
        elif op.kind == "chat" and not isinstance(body.get("messages"), list):
            problem = "Missing required parameter: 'messages'."
        elif "stream_options" in body and not body.get("stream"):
            problem = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        if problem is None:
            return None
        return self.error_response(Fault.status(400, problem), op)

    def error_response(
        self, fault: Fault, op: Operation | None, code: int | None = None
    ) -> web.Response:
        status = code or fault.code
        message = fault.message or _default_message(status)
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = _num(fault.retry_after)
        if op is not None and op.variant == "azure":
            payload: Json = {"error": {"code": fault.error_type or str(status), "message": message}}
        else:
            if status == 429:
                kind, err_code = "requests", "rate_limit_exceeded"
            elif status >= 500:
                kind, err_code = "server_error", None
            else:
                kind, err_code = "invalid_request_error", None
            if status == 401:
                err_code = "invalid_api_key"
            payload = {
                "error": {
                    "message": message,
                    "type": fault.error_type or kind,
                    "param": None,
                    "code": err_code,
                }
            }
        return self.json_response(payload, status, headers)

    # -- answers ------------------------------------------------------------------------

    def _tool_calls(self, fault: Fault) -> list[Json]:
        return [
            {
                "id": call.id or f"call_fake_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": orjson.dumps(call.arguments).decode()},
            }
            for i, call in enumerate(fault.tool_calls)
        ]

    def _finish(self, fault: Fault) -> str:
        return fault.finish_reason or ("tool_calls" if fault.tool_calls else "stop")

    def _usage(self, fault: Fault, embeddings: bool = False) -> Json:
        prompt, completion = self.usage_numbers(fault)
        if embeddings:
            return {"prompt_tokens": prompt, "total_tokens": prompt}
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": fault.cached_tokens},
        }

    def success(self, op: Operation, body: Any, fault: Fault) -> Any:
        created = int(time.time())
        if op.kind == "models":
            return {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "fake"}
                    for m in self.models
                ],
            }
        if op.kind == "embeddings":
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            dims = body.get("dimensions") or DEFAULT_DIMENSIONS
            data = []
            for i, text in enumerate(texts):
                vector: Any = fake_embedding(str(text), dims)
                if body.get("encoding_format") == "base64":
                    vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                data.append({"object": "embedding", "index": i, "embedding": vector})
            return {
                "object": "list",
                "data": data,
                "model": op.model,
                "usage": self._usage(fault, embeddings=True),
            }
        if op.kind == "completion":
            return {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": created,
                "model": op.model,
                "choices": [
                    {
                        "text": self.reply_text(fault),
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": self._finish(fault),
                    }
                ],
                "usage": self._usage(fault),
            }
        message: Json = {
            "role": "assistant",
            "content": self.reply_text(fault) or None,
            "refusal": None,
        }
        if fault.tool_calls:
            message["tool_calls"] = self._tool_calls(fault)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": created,
            "model": op.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish(fault),
                }
            ],
            "usage": self._usage(fault),
            "system_fingerprint": "fp_fake",
        }

    def frames(self, op: Operation, body: Any, fault: Fault) -> list[bytes]:
        options = body.get("stream_options") if isinstance(body, dict) else None
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        created = int(time.time())
        frames: list[bytes] = []
        if op.kind == "completion":
            base: Json = {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": created,
                "model": op.model,
            }

            def text_chunk(text: str, finish: str | None) -> Json:
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                return {**base, "choices": [choice]}

            frames += [_sse(text_chunk(p, None)) for p in self.pieces(fault)]
            frames.append(_sse(text_chunk("", self._finish(fault))))
        else:
            base = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": op.model,
                "system_fingerprint": "fp_fake",
            }
            if include_usage:
                base["usage"] = None

            def chunk(delta: Json, finish: str | None = None) -> Json:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {**base, "choices": [choice]}

            if op.variant == "azure":
                filter_results = [{"prompt_index": 0, "content_filter_results": {}}]
                frames.append(
                    _sse(
                        {
                            "choices": [],
                            "created": 0,
                            "id": "",
                            "model": "",
                            "object": "",
                            "prompt_filter_results": filter_results,
                        }
                    )
                )
            frames.append(_sse(chunk({"role": "assistant", "content": "", "refusal": None})))
            frames += [_sse(chunk({"content": p})) for p in self.pieces(fault)]
            for i, call in enumerate(self._tool_calls(fault)):
                head = {
                    "index": i,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                frames.append(_sse(chunk({"tool_calls": [head]})))
                args = call["function"]["arguments"]
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    frames.append(
                        _sse(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
                    )
            frames.append(_sse(chunk({}, self._finish(fault))))
        if include_usage:
            usage = {k: v for k, v in base.items() if k != "usage"}
            frames.append(_sse({**usage, "choices": [], "usage": self._usage(fault)}))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def stream_error_frame(self, fault: Fault, op: Operation) -> bytes:
        message = fault.message or _default_message(fault.code)
        kind = fault.error_type or (
            "server_error" if fault.code >= 500 else "invalid_request_error"
        )
        return _sse({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _default_message(status: int) -> str:
    return {
        400: "Invalid request.",
        401: "Incorrect API key provided.",
        403: "You are not allowed to sample from this model.",
        404: "The model does not exist or you do not have access to it.",
        429: "Rate limit reached for requests. Please try again in 1s.",
        500: "The server had an error while processing your request. Sorry about that!",
        503: "The engine is currently overloaded, please try again later.",
    }.get(status, f"HTTP {status}")
