"""OpenAI and OpenAI-compatible servers (vLLM, llama.cpp, Ollama, TGI, ...): a passthrough.

The request body is sent as given, with ``stream`` set to match the call; streams always
ask for ``stream_options.include_usage``. Responses are returned as the upstream sent them.
Streamed chunks are normalized so that exactly one chunk, the last, carries ``usage``:

- ``"usage": null`` on content chunks is removed;
- usage attached to a chunk that has choices (some compatible servers do that) is moved
  into a final ``choices: []`` chunk;
- chunks with ``choices: []`` and no usage (Azure's ``prompt_filter_results``) are dropped.

A stream that ends without ``[DONE]`` and without any ``finish_reason`` was cut short:
``SERVER``. ``data: {"error": ...}`` inside a stream maps by its ``code``/``type``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NamedTuple

from ._transport import (
    PerUpstream,
    error,
    generic_error_info,
    loads_object,
    post_json,
    post_sse,
    protocol_error,
    usage_chunk,
)
from .base import (
    CallOptions,
    FailureKind,
    Json,
    ProviderAdapter,
    Upstream,
    UpstreamError,
    failure_for_status,
)

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"


class Endpoint(NamedTuple):
    base: str
    headers: dict[str, str]
    suffix: str = ""
    """Appended after the operation path (Azure's ``?api-version=``)."""


def unstreamed(body: Json) -> Json:
    """The body for a non-streaming call (``stream_options`` is refused without ``stream``)."""
    if "stream" in body or "stream_options" in body:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return body


def streamed(body: Json) -> Json:
    """The body for a streaming call, always asking for the usage chunk."""
    options = body.get("stream_options")
    options = {**options, "include_usage": True} if isinstance(options, dict) else None
    return {**body, "stream": True, "stream_options": options or {"include_usage": True}}


def in_stream_error(up: Upstream, payload: Json) -> UpstreamError:
    """``data: {"error": {...}}`` in an OpenAI-style stream."""
    err = payload.get("error")
    message = generic_error_info(payload).message or "error event in stream"
    kind = FailureKind.PROTOCOL
    status: int | None = None
    if isinstance(err, dict):
        code: Any = err.get("code")
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        label = f"{err.get('type') or ''} {code or ''}".lower()
        if isinstance(code, int) and code >= 400:
            status = code
            kind = failure_for_status(code)
        elif "rate_limit" in label:
            kind = FailureKind.RATE_LIMITED
        elif "server_error" in label or "api_error" in label or "internal" in label:
            kind = FailureKind.SERVER
        elif "invalid_request" in label:
            kind = FailureKind.CLIENT
    return error(up, kind, f"upstream error in stream: {message}", status=status)


class OpenAIAdapter(ProviderAdapter):
    """``POST {base}/chat/completions``, ``/completions``, ``/embeddings`` with a Bearer key."""

    provider = "openai"

    def __init__(self) -> None:
        self._endpoints: PerUpstream[Endpoint] = PerUpstream(self._prepare)

    def _prepare(self, up: Upstream) -> Endpoint:
        headers = {"Content-Type": "application/json"}
        if up.api_key:
            headers["Authorization"] = f"Bearer {up.api_key}"
        return Endpoint(up.base_url.rstrip("/"), headers)

    def _url(self, ep: Endpoint, path: str, body: Json) -> str:
        return ep.base + path

    # -- non-streaming --------------------------------------------------------------------

    async def _post(self, up: Upstream, path: str, body: Json, opts: CallOptions, key: str) -> Json:
        ep = self._endpoints.get(up)
        resp = await post_json(up, self._url(ep, path, body), ep.headers, unstreamed(body), opts)
        if not isinstance(resp.get(key), list):
            raise protocol_error(up, f"upstream response has no {key!r} list")
        return resp

    async def chat(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        return await self._post(up, CHAT, body, opts, "choices")

    async def completion(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        return await self._post(up, COMPLETIONS, body, opts, "choices")

    async def embeddings(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        return await self._post(up, EMBEDDINGS, body, opts, "data")

    # -- streaming ------------------------------------------------------------------------

    def chat_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]:
        return self._stream(up, CHAT, body, opts, "chat.completion.chunk")

    def completion_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]:
        return self._stream(up, COMPLETIONS, body, opts, "text_completion")

    async def _stream(
        self, up: Upstream, path: str, body: Json, opts: CallOptions, obj: str
    ) -> AsyncIterator[Json]:
        ep = self._endpoints.get(up)
        url = self._url(ep, path, body)
        done = finished = usage_sent = False
        pending: Any = None
        last: Json | None = None
        async with aclosing(post_sse(up, url, ep.headers, streamed(body), opts)) as events:
            async for _event, data in events:
                if done:
                    continue  # drain to the end so the connection can be reused
                if data == b"[DONE]":
                    done = True
                    continue
                chunk = loads_object(up, data, "stream event")
                choices = chunk.get("choices")
                usage = chunk.get("usage")
                if choices:
                    if "usage" in chunk:
                        del chunk["usage"]
                        if usage is not None:
                            pending = usage
                    if not finished:
                        finished = any(c.get("finish_reason") for c in choices)
                    last = chunk
                    yield chunk
                elif usage is not None:
                    usage_sent = True
                    yield chunk
                elif choices is None and "error" in chunk:
                    raise in_stream_error(up, chunk)
                # else: choices [] without usage (Azure prompt filter results): dropped
        if not done and not finished:
            raise error(up, FailureKind.SERVER, "upstream ended the stream before it finished")
        if not usage_sent and pending is not None and last is not None:
            yield usage_chunk(
                last.get("id", ""), last.get("created", 0), last.get("model", ""), pending, obj
            )


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Same wire format; the key is optional (local servers usually have none)."""

    provider = "openai-compatible"
