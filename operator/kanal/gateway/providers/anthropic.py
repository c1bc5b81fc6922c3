"""Anthropic Messages API (``POST {base}/messages``), both ways, streaming included.

Request (OpenAI -> Anthropic):

- ``system``/``developer`` messages -> top-level ``system`` (joined by blank lines);
- user/assistant content (string or parts) -> content blocks: ``text``; ``image_url``
  (``data:`` URL -> base64 source, http(s) -> url source); ``file`` with PDF ``file_data``
  -> ``document``; other part types are refused (400, ``CLIENT``);
- assistant ``tool_calls`` -> ``tool_use`` blocks (arguments parsed as JSON);
  ``tool`` messages -> ``tool_result`` blocks in a user turn; consecutive turns of one role
  are merged (Anthropic wants alternating roles);
- ``max_completion_tokens`` / ``max_tokens`` -> ``max_tokens`` (required; default 4096);
  ``stop`` -> ``stop_sequences``; ``temperature`` (clamped to Anthropic's 0..1); ``top_p``;
  ``tools`` -> ``{name, description, input_schema}``; ``tool_choice`` auto/none/required/
  named -> auto/none/any/tool; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``; ``user`` -> ``metadata.user_id``;
- ``n > 1`` and a non-text ``response_format`` are refused (400); penalties, ``seed``,
  ``logprobs`` are dropped (Anthropic has none).

Response: text blocks joined into ``content``, ``tool_use`` -> ``tool_calls``; stop_reason
end_turn/stop_sequence -> stop, max_tokens -> length, tool_use -> tool_calls, refusal ->
content_filter. ``prompt_tokens`` = input + cache creation + cache read tokens
(``prompt_tokens_details.cached_tokens`` = cache reads), as OpenAI counts them.

Stream: ``message_start`` (id, model, input usage) -> first chunk with the role;
``content_block_start`` (tool_use) / ``content_block_delta`` (``text_delta``,
``input_json_delta``) -> content / tool_call chunks; ``message_delta`` -> a chunk with
``finish_reason`` (its ``output_tokens`` is cumulative: the last wins); ``message_stop``
-> the final usage chunk. ``ping``, ``content_block_stop``, thinking deltas and unknown
events are skipped. An ``error`` event raises with its mapped kind (``overloaded_error``
-> ``SERVER``, ``rate_limit_error`` -> ``RATE_LIMITED``, ...; unknown -> ``PROTOCOL``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NamedTuple

import orjson

from ._content import (
    client_error,
    data_url,
    image_url_of,
    max_output_tokens,
    stop_list,
    text_of,
    tool_arguments,
)
from ._transport import (
    PerUpstream,
    as_int,
    error,
    generic_error_info,
    loads_object,
    make_usage,
    post_json,
    post_sse,
    protocol_error,
    usage_chunk,
)
from .base import CallOptions, FailureKind, Json, ProviderAdapter, Upstream, UpstreamError

PROVIDER = "anthropic"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

ERROR_TYPES: dict[str, tuple[FailureKind, int | None]] = {
    "invalid_request_error": (FailureKind.CLIENT, 400),
    "authentication_error": (FailureKind.AUTH, 401),
    "permission_error": (FailureKind.AUTH, 403),
    "not_found_error": (FailureKind.CLIENT, 404),
    "request_too_large": (FailureKind.CLIENT, 413),
    "rate_limit_error": (FailureKind.RATE_LIMITED, 429),
    "api_error": (FailureKind.SERVER, 500),
    "overloaded_error": (FailureKind.SERVER, 529),
    "timeout_error": (FailureKind.TIMEOUT, 504),
}


class Endpoint(NamedTuple):
    url: str
    headers: dict[str, str]


# -- request ---------------------------------------------------------------------------------


def _blocks(content: Any) -> list[Json]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise client_error(PROVIDER, "message content must be a string or a list of parts")
    blocks: list[Json] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = image_url_of(part)
            inline = data_url(url)
            if inline:
                source: Json = {"type": "base64", "media_type": inline[0], "data": inline[1]}
            elif url.startswith(("https://", "http://")):
                source = {"type": "url", "url": url}
            else:
                raise client_error(PROVIDER, "image_url must be a data: or http(s) URL")
            blocks.append({"type": "image", "source": source})
        elif kind == "file":
            file = part.get("file") or {}
            inline = data_url(file.get("file_data") or "")
            if not inline:
                raise client_error(PROVIDER, "file parts need file_data as a data: URL")
            source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
            blocks.append({"type": "document", "source": source})
        elif kind == "refusal":
            continue
        else:
            raise client_error(PROVIDER, f"content part type {kind!r} is not supported")
    return blocks


def _tool_use(call: Json) -> Json:
    fn = call.get("function") or {}
    parsed = tool_arguments(PROVIDER, fn)
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": parsed}


def _tool(tool: Json) -> Json:
    if tool.get("type", "function") != "function":
        raise client_error(PROVIDER, f"tool type {tool.get('type')!r} is not supported")
    fn = tool.get("function") or {}
    out: Json = {
        "name": fn.get("name"),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any) -> Json | None:
    if choice in (None, "auto"):
        return {"type": "auto"} if choice else None
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"type": "tool", "name": name}
    raise client_error(PROVIDER, f"unsupported tool_choice {choice!r}")


def to_anthropic(body: Json, stream: bool = False) -> Json:
    """The Anthropic Messages request for an OpenAI chat body."""
    system: list[str] = []
    messages: list[Json] = []
    for msg in body.get("messages") or ():
        role = msg.get("role")
        if role in ("system", "developer"):
            text = text_of(msg.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(msg.get("content"))
        elif role == "assistant":
            blocks = _blocks(msg.get("content"))
            blocks.extend(_tool_use(call) for call in msg.get("tool_calls") or ())
        elif role == "tool":
            role = "user"
            content = msg.get("content")
            result: Any = content if isinstance(content, str) else _blocks(content)
            blocks = [
                {"type": "tool_result", "tool_use_id": msg.get("tool_call_id"), "content": result}
            ]
        else:
            raise client_error(PROVIDER, f"message role {role!r} is not supported")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    n = body.get("n")
    if n not in (None, 1):
        raise client_error(PROVIDER, "n > 1 is not supported")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise client_error(PROVIDER, f"response_format {fmt.get('type')!r} is not supported")

    out: Json = {
        "model": body["model"],
        "max_tokens": max_output_tokens(body) or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if system:
        out["system"] = "\n\n".join(system)
    stop = stop_list(body)
    if stop:
        out["stop_sequences"] = stop
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    if isinstance(body.get("top_p"), int | float):
        out["top_p"] = body["top_p"]
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice:
            out["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return out


# -- response --------------------------------------------------------------------------------


def usage_of(usage: Json) -> Json:
    cache_read = as_int(usage.get("cache_read_input_tokens"))
    cache_write = as_int(usage.get("cache_creation_input_tokens"))
    prompt = as_int(usage.get("input_tokens")) + cache_read + cache_write
    out = make_usage(prompt, as_int(usage.get("output_tokens")))
    if cache_read or cache_write:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return out


def from_anthropic(resp: Json, model: str = "") -> Json:
    """The OpenAI chat.completion for an Anthropic message."""
    texts: list[str] = []
    calls: list[Json] = []
    for block in resp.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    message: Json = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": resp.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH_REASONS.get(resp.get("stop_reason") or "", "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_of(resp.get("usage") or {}),
    }


def stream_error(up: Upstream, event: Json) -> UpstreamError:
    err = event.get("error") or {}
    kind_name = err.get("type") if isinstance(err, dict) else None
    kind, status = ERROR_TYPES.get(kind_name or "", (FailureKind.PROTOCOL, None))
    message = generic_error_info(event).message or "no message"
    return error(up, kind, f"upstream error event {kind_name}: {message}", status=status)


class _StreamState:
    __slots__ = ("created", "id", "model", "stop_reason", "tools", "usage")

    def __init__(self, model: str) -> None:
        self.id = ""
        self.model = model
        self.created = int(time.time())
        self.usage: Json = {}
        self.tools: dict[Any, int] = {}
        self.stop_reason: str | None = None

    def chunk(self, delta: Json, finish: str | None = None) -> Json:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def final(self) -> Json:
        return usage_chunk(self.id, self.created, self.model, usage_of(self.usage))


# -- adapter ---------------------------------------------------------------------------------


def _prepare(up: Upstream) -> Endpoint:
    base = up.base_url.rstrip("/")
    url = base + "/messages" if base.endswith("/v1") else base + "/v1/messages"
    headers = {
        "Content-Type": "application/json",
        "anthropic-version": up.api_version or DEFAULT_VERSION,
    }
    if up.api_key:
        headers["x-api-key"] = up.api_key
    return Endpoint(url, headers)


class AnthropicAdapter(ProviderAdapter):
    """Chat only: Anthropic has no text completions or embeddings endpoint."""

    provider = PROVIDER

    def __init__(self) -> None:
        self._endpoints: PerUpstream[Endpoint] = PerUpstream(_prepare)

    async def chat(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        ep = self._endpoints.get(up)
        resp = await post_json(up, ep.url, ep.headers, to_anthropic(body), opts)
        if not isinstance(resp.get("content"), list):
            raise protocol_error(up, "upstream response has no 'content' list")
        return from_anthropic(resp, body.get("model", ""))

    async def chat_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]:
        ep = self._endpoints.get(up)
        payload = to_anthropic(body, stream=True)
        st = _StreamState(body.get("model", ""))
        stopped = False
        async with aclosing(post_sse(up, ep.url, ep.headers, payload, opts)) as events:
            async for _event, data in events:
                if stopped:
                    continue  # drain to the end so the connection can be reused
                event = loads_object(up, data, "stream event")
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    delta_kind = delta.get("type")
                    if delta_kind == "text_delta":
                        yield st.chunk({"content": delta.get("text", "")})
                    elif delta_kind == "input_json_delta":
                        index = st.tools.get(event.get("index"))
                        if index is not None:
                            fn = {"arguments": delta.get("partial_json", "")}
                            yield st.chunk({"tool_calls": [{"index": index, "function": fn}]})
                elif kind == "message_start":
                    message = event.get("message") or {}
                    st.id = message.get("id") or st.id
                    st.model = message.get("model") or st.model
                    st.usage.update(message.get("usage") or {})
                    yield st.chunk({"role": "assistant", "content": ""})
                elif kind == "content_block_start":
                    block = event.get("content_block") or {}
                    if block.get("type") == "tool_use":
                        index = st.tools[event.get("index")] = len(st.tools)
                        call = {
                            "index": index,
                            "id": block.get("id"),
                            "type": "function",
                            "function": {"name": block.get("name"), "arguments": ""},
                        }
                        yield st.chunk({"tool_calls": [call]})
                    elif block.get("type") == "text" and block.get("text"):
                        yield st.chunk({"content": block["text"]})
                elif kind == "message_delta":
                    st.stop_reason = (event.get("delta") or {}).get("stop_reason") or "end_turn"
                    usage = event.get("usage") or {}
                    st.usage.update((k, v) for k, v in usage.items() if v is not None)
                    yield st.chunk({}, FINISH_REASONS.get(st.stop_reason, "stop"))
                elif kind == "message_stop":
                    stopped = True
                    yield st.final()
                elif kind == "error":
                    raise stream_error(up, event)
        if not stopped:
            if st.stop_reason is None:
                raise error(up, FailureKind.SERVER, "upstream ended the stream before message_stop")
            yield st.final()
