"""Google Gemini API: ``{base}/models/{model}:generateContent``, ``:streamGenerateContent
?alt=sse`` and ``:batchEmbedContents``, key in the ``x-goog-api-key`` header.

The base is ``https://generativelanguage.googleapis.com/v1beta`` (a base without a path
gets ``/v1beta``); a ``models/`` prefix on the model name is accepted.

Request (OpenAI -> Gemini): system/developer messages -> ``systemInstruction``; user ->
role ``user``, assistant -> role ``model`` (consecutive turns of one role merged); text
parts -> ``text``, images and files as ``data:`` URLs -> ``inlineData`` (other URLs are
refused: Gemini cannot fetch arbitrary URLs); assistant ``tool_calls`` -> ``functionCall``
parts; ``tool`` messages -> ``functionResponse`` parts (name looked up from the matching
tool call; a JSON-object result is passed as the response, anything else as
``{"content": text}``). ``generationConfig``: ``maxOutputTokens``, ``temperature``,
``topP``, ``stopSequences``, ``candidateCount`` (n), ``presencePenalty``,
``frequencyPenalty``, ``seed``, and ``response_format`` json_object/json_schema ->
``responseMimeType``/``responseSchema``. ``tools`` -> ``functionDeclarations`` (schemas
stripped of ``additionalProperties``/``$schema``/``strict``, which Gemini rejects);
``tool_choice`` -> ``toolConfig.functionCallingConfig`` (AUTO/NONE/ANY, named -> ANY +
``allowedFunctionNames``).

Response: parts' text joined (thought parts skipped), ``functionCall`` -> ``tool_calls``
(Gemini's call id, else a generated one). finishReason STOP -> stop (tool_calls when the
candidate called a function), MAX_TOKENS -> length, SAFETY/RECITATION/BLOCKLIST/
PROHIBITED_CONTENT/SPII/IMAGE_SAFETY -> content_filter; a prompt blocked by
``promptFeedback`` -> one empty choice with content_filter. Usage from ``usageMetadata``:
prompt = promptTokenCount (+ toolUsePromptTokenCount), completion = candidatesTokenCount +
thoughtsTokenCount. In streams ``usageMetadata`` is cumulative: the last one is reported in
the final usage chunk, after the stream ends (Gemini has no end marker; a stream that ends
without any finishReason was cut short: ``SERVER``). ``data: {"error": ...}`` in a stream
maps by its ``code``. A 400 whose details say ``API_KEY_INVALID`` is ``AUTH``; a
``RetryInfo.retryDelay`` is the retry hint when no Retry-After header is present.

Embeddings: ``:batchEmbedContents``, one request per input, ``dimensions`` ->
``outputDimensionality``. Gemini reports no token usage for embeddings, so the result has
no ``usage`` key: the gateway must estimate it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import orjson

from ._content import (
    client_error,
    data_url,
    embedding_inputs,
    encode_embedding,
    image_url_of,
    max_output_tokens,
    stop_list,
    strip_schema,
    text_of,
    tool_arguments,
)
from ._transport import (
    ErrorInfo,
    PerUpstream,
    as_int,
    error,
    loads_object,
    make_usage,
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

PROVIDER = "gemini"
DEFAULT_VERSION_PATH = "/v1beta"

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


class Endpoint(NamedTuple):
    models: str
    """``{base}/models/``"""
    headers: dict[str, str]


# -- request ---------------------------------------------------------------------------------


def _parts(content: Any) -> list[Json]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise client_error(PROVIDER, "message content must be a string or a list of parts")
    parts: list[Json] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
            continue
        if kind == "image_url":
            inline = data_url(image_url_of(part))
        elif kind == "file":
            inline = data_url((part.get("file") or {}).get("file_data") or "")
        elif kind == "refusal":
            continue
        else:
            raise client_error(PROVIDER, f"content part type {kind!r} is not supported")
        if not inline:
            raise client_error(PROVIDER, "images and files must be data: URLs")
        parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
    return parts


def _function_call(call: Json) -> tuple[str, Json]:
    fn = call.get("function") or {}
    name = fn.get("name") or ""
    return name, {"functionCall": {"name": name, "args": tool_arguments(PROVIDER, fn)}}


def _function_response(msg: Json, names: dict[str, str]) -> Json:
    name = names.get(msg.get("tool_call_id") or "") or msg.get("name")
    if not name:
        raise client_error(PROVIDER, "tool message does not answer a known tool call")
    text = text_of(msg.get("content"))
    response: Any = None
    if text.startswith("{"):
        try:
            response = orjson.loads(text)
        except orjson.JSONDecodeError:
            response = None
    if not isinstance(response, dict):
        response = {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def _declaration(tool: Json) -> Json:
    if tool.get("type", "function") != "function":
        raise client_error(PROVIDER, f"tool type {tool.get('type')!r} is not supported")
    fn = tool.get("function") or {}
    out: Json = {"name": fn.get("name")}
    if fn.get("description"):
        out["description"] = fn["description"]
    params = fn.get("parameters")
    if isinstance(params, dict) and params.get("properties"):
        out["parameters"] = strip_schema(params)
    return out


def _tool_config(choice: Any) -> Json | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
        return {"functionCallingConfig": {"mode": mode}}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise client_error(PROVIDER, f"unsupported tool_choice {choice!r}")


def _generation_config(body: Json) -> Json:
    config: Json = {}
    max_tokens = max_output_tokens(body)
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = body.get(ours)
        if isinstance(value, int | float):
            config[theirs] = value
    if isinstance(body.get("seed"), int):
        config["seed"] = body["seed"]
    stop = stop_list(body)
    if stop:
        config["stopSequences"] = stop
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        config["candidateCount"] = n
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            config["responseMimeType"] = "application/json"
        elif fmt.get("type") == "json_schema":
            config["responseMimeType"] = "application/json"
            schema = (fmt.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                config["responseSchema"] = strip_schema(schema)
    return config


def to_gemini(body: Json) -> Json:
    """The Gemini generateContent request for an OpenAI chat body."""
    system: list[str] = []
    contents: list[Json] = []
    names: dict[str, str] = {}
    for msg in body.get("messages") or ():
        role = msg.get("role")
        if role in ("system", "developer"):
            text = text_of(msg.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            parts = _parts(msg.get("content"))
        elif role == "assistant":
            role = "model"
            parts = _parts(msg.get("content"))
            for call in msg.get("tool_calls") or ():
                name, part = _function_call(call)
                names[call.get("id") or ""] = name
                parts.append(part)
        elif role == "tool":
            role = "user"
            parts = [_function_response(msg, names)]
        else:
            raise client_error(PROVIDER, f"message role {role!r} is not supported")
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    out: Json = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        out["tools"] = [{"functionDeclarations": [_declaration(t) for t in tools]}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    return out


# -- response --------------------------------------------------------------------------------


def usage_of(meta: Json) -> Json:
    prompt = as_int(meta.get("promptTokenCount")) + as_int(meta.get("toolUsePromptTokenCount"))
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    out = make_usage(prompt, as_int(meta.get("candidatesTokenCount")) + thoughts)
    cached = as_int(meta.get("cachedContentTokenCount"))
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return out


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _split_parts(parts: Any) -> tuple[list[str], list[Json]]:
    texts: list[str] = []
    calls: list[Json] = []
    for part in parts or ():
        if "text" in part:
            if not part.get("thought"):
                texts.append(part["text"])
        elif "functionCall" in part:
            fc = part["functionCall"] or {}
            calls.append(
                {
                    "id": fc.get("id") or _call_id(),
                    "type": "function",
                    "function": {
                        "name": fc.get("name"),
                        "arguments": orjson.dumps(fc.get("args") or {}).decode(),
                    },
                }
            )
    return texts, calls


def _finish(reason: Any, called: bool) -> str:
    finish = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if called and finish == "stop" else finish


def from_gemini(resp: Json, model: str = "") -> Json:
    """The OpenAI chat.completion for a Gemini GenerateContentResponse."""
    choices: list[Json] = []
    for i, cand in enumerate(resp.get("candidates") or ()):
        texts, calls = _split_parts((cand.get("content") or {}).get("parts"))
        message: Json = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": cand.get("index", i),
                "message": message,
                "finish_reason": _finish(cand.get("finishReason"), bool(calls)),
                "logprobs": None,
            }
        )
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "content_filter",
                "logprobs": None,
            }
        )
    return {
        "id": resp.get("responseId") or "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.get("modelVersion") or model,
        "choices": choices,
        "usage": usage_of(resp.get("usageMetadata") or {}),
    }


def _retry_delay(value: Any) -> float | None:
    if isinstance(value, str) and value.endswith("s"):
        try:
            return float(value[:-1])
        except ValueError:
            return None
    return None


def error_info(payload: Any) -> ErrorInfo:
    """Gemini's ``{"error": {code, message, status, details}}`` (or a list of one)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return ErrorInfo()
    info = ErrorInfo(err.get("message") if isinstance(err.get("message"), str) else None)
    for detail in err.get("details") or ():
        if not isinstance(detail, dict):
            continue
        if detail.get("reason") == "API_KEY_INVALID":
            info.kind = FailureKind.AUTH
        if str(detail.get("@type", "")).endswith("RetryInfo"):
            info.retry_after = _retry_delay(detail.get("retryDelay"))
    return info


def stream_error(up: Upstream, event: Json) -> UpstreamError:
    info = error_info(event)
    code = (event.get("error") or {}).get("code")
    kind = info.kind or (failure_for_status(code) if isinstance(code, int) else None)
    return error(
        up,
        kind or FailureKind.PROTOCOL,
        f"upstream error in stream: {info.message or 'no message'}",
        status=code if isinstance(code, int) else None,
        retry_after=info.retry_after,
    )


class _StreamState:
    __slots__ = ("called", "created", "finished", "id", "model", "started", "tool_index", "usage")

    def __init__(self, model: str) -> None:
        self.id = ""
        self.model = model
        self.created = int(time.time())
        self.usage: Json | None = None
        self.started: set[int] = set()
        self.called: set[int] = set()
        self.tool_index: dict[int, int] = {}
        self.finished = False

    def chunk(self, index: int, delta: Json, finish: str | None) -> Json:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            ],
        }

    def chunks(self, event: Json) -> list[Json]:
        if not self.id:
            self.id = event.get("responseId") or "chatcmpl-" + uuid.uuid4().hex
            self.model = event.get("modelVersion") or self.model
        meta = event.get("usageMetadata")
        if meta:
            self.usage = meta
        out: list[Json] = []
        candidates = event.get("candidates")
        if not candidates:
            if (event.get("promptFeedback") or {}).get("blockReason"):
                self.finished = True
                out.append(self.chunk(0, {"role": "assistant"}, "content_filter"))
            return out
        for i, cand in enumerate(candidates):
            index = cand.get("index", i)
            delta: Json = {}
            if index not in self.started:
                self.started.add(index)
                delta["role"] = "assistant"
            texts, calls = _split_parts((cand.get("content") or {}).get("parts"))
            if texts:
                delta["content"] = "".join(texts)
            if calls:
                self.called.add(index)
                base = self.tool_index.get(index, 0)
                self.tool_index[index] = base + len(calls)
                delta["tool_calls"] = [{"index": base + j, **call} for j, call in enumerate(calls)]
            reason = cand.get("finishReason")
            finish = _finish(reason, index in self.called) if reason else None
            if finish:
                self.finished = True
            if delta or finish:
                out.append(self.chunk(index, delta, finish))
        return out


# -- adapter ---------------------------------------------------------------------------------


def _prepare(up: Upstream) -> Endpoint:
    base = up.base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += DEFAULT_VERSION_PATH
    headers = {"Content-Type": "application/json"}
    if up.api_key:
        headers["x-goog-api-key"] = up.api_key
    return Endpoint(base + "/models/", headers)


def _model(body: Json) -> str:
    model = str(body.get("model", ""))
    return quote(model.removeprefix("models/"), safe="")


class GeminiAdapter(ProviderAdapter):
    """Chat and embeddings; Gemini has no text-completions endpoint."""

    provider = PROVIDER

    def __init__(self) -> None:
        self._endpoints: PerUpstream[Endpoint] = PerUpstream(_prepare)

    async def chat(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        ep = self._endpoints.get(up)
        url = ep.models + _model(body) + ":generateContent"
        resp = await post_json(up, url, ep.headers, to_gemini(body), opts, error_info)
        if "candidates" not in resp and "promptFeedback" not in resp:
            raise protocol_error(up, "upstream response has no 'candidates'")
        return from_gemini(resp, body.get("model", ""))

    async def chat_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]:
        ep = self._endpoints.get(up)
        url = ep.models + _model(body) + ":streamGenerateContent?alt=sse"
        st = _StreamState(body.get("model", ""))
        payload = to_gemini(body)
        async with aclosing(post_sse(up, url, ep.headers, payload, opts, error_info)) as events:
            async for _event, data in events:
                event = loads_object(up, data, "stream event")
                if "error" in event:
                    raise stream_error(up, event)
                for chunk in st.chunks(event):
                    yield chunk
        if not st.finished:
            raise error(up, FailureKind.SERVER, "upstream ended the stream without a finishReason")
        if st.usage is not None:
            yield usage_chunk(st.id, st.created, st.model, usage_of(st.usage))

    async def embeddings(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        texts = embedding_inputs(PROVIDER, body)
        ep = self._endpoints.get(up)
        model = _model(body)
        ref = "models/" + str(body.get("model", "")).removeprefix("models/")
        dims = body.get("dimensions")
        requests: list[Json] = []
        for text in texts:
            request: Json = {"model": ref, "content": {"parts": [{"text": text}]}}
            if isinstance(dims, int):
                request["outputDimensionality"] = dims
            requests.append(request)
        url = ep.models + model + ":batchEmbedContents"
        resp = await post_json(up, url, ep.headers, {"requests": requests}, opts, error_info)
        embeddings = resp.get("embeddings")
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            raise protocol_error(up, "upstream response has no matching 'embeddings' list")
        fmt = body.get("encoding_format")
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_embedding((e or {}).get("values") or [], fmt),
            }
            for i, e in enumerate(embeddings)
        ]
        return {"object": "list", "data": data, "model": body.get("model", "")}
