"""The ``mock`` provider: deterministic answers with no network at all, for demos and tests.

Everything below is a promise tests and demos may rely on.

- **Tokens are words**: a text's token count is ``len(text.split())``.
- **Chat**: the reply is ``"Mock reply from {model}: {echo}"`` where ``echo`` is the text of
  the last ``user`` message (a string, or its text parts joined by one space; empty if there
  is none). The reply is re-joined with single spaces and cut to ``max_completion_tokens``
  (else ``max_tokens``) words when it is longer; ``finish_reason`` is then ``length``, else
  ``stop``. One choice, whatever ``n`` says; tools are ignored.
- **Usage** is always reported: ``prompt_tokens`` = words in the text of all messages (every
  role; string content or text parts), ``completion_tokens`` = words in the reply.
- **Streams**: a first chunk with ``{"role": "assistant", "content": ""}``, then one chunk per
  word (the first word bare, later ones with a leading space, so the deltas concatenate to
  the non-streamed reply), then a chunk with an empty delta and the ``finish_reason``, then
  the usage chunk with ``choices: []`` — always, as if ``include_usage`` were set.
- **Text completions**: one choice per prompt (a string or a list of strings), the text
  ``"Mock completion from {model}: {prompt}"`` with the same word cut and token rules;
  streamed word by word as ``text_completion`` chunks (prompt after prompt), then one
  usage chunk.
- **Embeddings**: one vector per input string, ``dimensions`` floats (default 16),
  from SHA-256 of the UTF-8 text (``sha256(text)``, then ``sha256(previous digest)`` while
  more bytes are needed), each byte ``b`` mapped to ``b / 127.5 - 1``, then scaled to unit
  length — see :func:`embedding`. ``encoding_format: base64`` gives little-endian float32 as
  OpenAI does. Usage: prompt_tokens = total_tokens = words in the inputs.
- **Ids**: ``chatcmpl-mock-`` / ``cmpl-mock-`` + 16 hex digits of BLAKE2b over the model and
  the reply, so equal requests get equal ids. ``created`` is the current time.
- **Scripted failures**: a model named ``error-NNN`` (three digits, e.g. ``error-503``)
  fails every call with ``UpstreamError(failure_for_status(NNN), status=NNN)``;
  ``error-429`` carries ``retry_after=1.0``. Streams fail on their first item. Use it to
  demo fallbacks and retries without a network.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._content import embedding_inputs, encode_embedding, max_output_tokens
from ._transport import make_usage, usage_chunk
from .base import (
    CallOptions,
    Json,
    ProviderAdapter,
    Upstream,
    UpstreamError,
    failure_for_status,
)

PROVIDER = "mock"
DEFAULT_DIMENSIONS = 16


def count_tokens(text: str) -> int:
    """The mock's token count: whitespace-separated words."""
    return len(text.split())


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _cut(text: str, limit: int | None) -> tuple[list[str], str]:
    words = text.split()
    if limit is not None and len(words) > limit:
        return words[: max(limit, 0)], "length"
    return words, "stop"


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()


def _fail_if_scripted(up: Upstream, model: str) -> None:
    if len(model) == 9 and model.startswith("error-") and model[6:].isdigit():
        status = int(model[6:])
        if status >= 400:
            raise UpstreamError(
                failure_for_status(status),
                f"backend {up.backend_id}: mock model {model} fails with HTTP {status}",
                status=status,
                retry_after=1.0 if status == 429 else None,
            )


def reply(body: Json) -> tuple[list[str], str]:
    """The words of the mock's chat reply to ``body`` and its finish_reason."""
    echo = ""
    for msg in reversed(body.get("messages") or ()):
        if msg.get("role") == "user":
            echo = _text(msg.get("content"))
            break
    return _cut(f"Mock reply from {body.get('model', '')}: {echo}", max_output_tokens(body))


def prompt_tokens(body: Json) -> int:
    return sum(count_tokens(_text(m.get("content"))) for m in body.get("messages") or ())


def embedding(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The mock's unit-length embedding of ``text``."""
    raw = b""
    digest = hashlib.sha256(text.encode()).digest()
    while len(raw) < dimensions:
        raw += digest
        digest = hashlib.sha256(digest).digest()
    values = [b / 127.5 - 1.0 for b in raw[:dimensions]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _prompts(body: Json) -> list[str]:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return prompt or [""]
        return [" ".join(str(t) for t in prompt)]  # token ids: echoed as numbers
    return [str(prompt)]


class MockAdapter(ProviderAdapter):
    provider = PROVIDER

    async def chat(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        model = str(body.get("model", ""))
        _fail_if_scripted(up, model)
        words, finish = reply(body)
        content = " ".join(words)
        return {
            "id": "chatcmpl-mock-" + _digest(model, content),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": make_usage(prompt_tokens(body), len(words)),
        }

    async def chat_stream(self, up: Upstream, body: Json, opts: CallOptions) -> AsyncIterator[Json]:
        model = str(body.get("model", ""))
        _fail_if_scripted(up, model)
        words, finish = reply(body)
        chunk_id = "chatcmpl-mock-" + _digest(model, " ".join(words))
        created = int(time.time())

        def chunk(delta: Json, finish_reason: str | None = None) -> Json:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ],
            }

        yield chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            yield chunk({"content": word if i == 0 else " " + word})
        yield chunk({}, finish)
        usage = make_usage(prompt_tokens(body), len(words))
        yield usage_chunk(chunk_id, created, model, usage)

    def _completions(self, body: Json) -> Iterator[tuple[list[str], str]]:
        model = body.get("model", "")
        limit = max_output_tokens(body)
        for prompt in _prompts(body):
            yield _cut(f"Mock completion from {model}: {prompt}", limit)

    async def completion(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        model = str(body.get("model", ""))
        _fail_if_scripted(up, model)
        results = list(self._completions(body))
        texts = [" ".join(words) for words, _ in results]
        return {
            "id": "cmpl-mock-" + _digest(model, *texts),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
                for i, (text, (_, finish)) in enumerate(zip(texts, results, strict=True))
            ],
            "usage": make_usage(
                sum(count_tokens(p) for p in _prompts(body)),
                sum(len(words) for words, _ in results),
            ),
        }

    async def completion_stream(
        self, up: Upstream, body: Json, opts: CallOptions
    ) -> AsyncIterator[Json]:
        model = str(body.get("model", ""))
        _fail_if_scripted(up, model)
        results = list(self._completions(body))
        chunk_id = "cmpl-mock-" + _digest(model, *(" ".join(w) for w, _ in results))
        created = int(time.time())

        def chunk(index: int, text: str, finish_reason: str | None = None) -> Json:
            return {
                "id": chunk_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
                ],
            }

        for index, (words, finish) in enumerate(results):
            for i, word in enumerate(words):
                yield chunk(index, word if i == 0 else " " + word)
            yield chunk(index, "", finish)
        usage = make_usage(
            sum(count_tokens(p) for p in _prompts(body)), sum(len(w) for w, _ in results)
        )
        yield usage_chunk(chunk_id, created, model, usage, "text_completion")

    async def embeddings(self, up: Upstream, body: Json, opts: CallOptions) -> Json:
        model = str(body.get("model", ""))
        _fail_if_scripted(up, model)
        texts = embedding_inputs(PROVIDER, body)
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and dims > 0 else DEFAULT_DIMENSIONS
        fmt = body.get("encoding_format")
        tokens = sum(count_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": encode_embedding(embedding(t, dims), fmt),
                }
                for i, t in enumerate(texts)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
