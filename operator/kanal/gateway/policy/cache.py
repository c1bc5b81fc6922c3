"""Exact-match response cache (``LlmRoute.cache``).

**Key.** ``kanal:cache:{<tenant>}:<sha256 hex>``: the hash covers a format version, the
operation, the route id and the canonical JSON (keys sorted, compact) of the body as it goes
upstream — after redaction and conversation context, since the cache runs after those
policies — minus the fields that never change the answer (:data:`IGNORED_FIELDS`: ``stream``,
``stream_options``, ``user``, ``store``, ``metadata``). The key never holds the payload (a
fixed 64-hex-digit hash whatever the prompt size), and the ``{tenant}`` hash tag keeps a
tenant's entries in one Redis Cluster slot. Tenants never share entries, even on a route
that admits several namespaces.

**Lookup.** ``x-kanal-cache: hit`` answers from the cache with the stored response, byte
for byte the body the first caller got (id, created and the original ``usage`` included:
the SDKs expect usage, and it says what the answer cost when it was made; limits and budget
are not charged for hits because the pipeline stops at the cache). A streamed request is
answered from the same entry as a stream (the service replays it as chunks), so streamed and
non-streamed callers share entries. ``x-kanal-cache: bypass`` (the caller sent
``x-kanal-cache: bypass`` or ``Cache-Control: no-cache``) skips the lookup; the fresh answer
is still stored. Otherwise ``x-kanal-cache: miss``.

**Store.** Only answers that completed without error: never errors, never streams cut
short or broken. A streamed answer is stored as the full ``chat.completion`` /
``text_completion`` it amounts to (text, finish_reason, model, provider-reported usage);
streams whose answer the gateway does not assemble in full are not stored (tool calls,
logprobs, more than one choice). Answers larger than ``cache_max_bytes`` are not stored. The
TTL is the route's ``cache.ttl``. Concurrent identical misses each go upstream (no request
coalescing); the last one to finish wins the entry.

A broken Redis never fails a call: lookups become misses, writes are skipped, both logged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from kanal.api import parse_duration
from kanal.gateway.policy._cache_store import (
    CacheStore,
    MemoryCacheStore,
    RedisCacheStore,
)
from kanal.gateway.policy.base import Call, Json, Outcome, Policy
from kanal.snapshot import RouteConfig

if TYPE_CHECKING:
    from kanal.gateway.stores import Stores

log = logging.getLogger("kanal.gateway.cache")

HEADER = "x-kanal-cache"
KEY_PREFIX = "kanal:cache:"
KEY_VERSION = "v1"
"""Part of every hash: a change in what is stored or how keys are made bumps it."""
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "store", "metadata"})
"""Request fields that do not change the answer, left out of the key."""
_NOT_ASSEMBLED = frozenset({"tool_calls", "function_call"})
"""finish_reasons of streamed answers whose parts the gateway does not assemble."""

__all__ = [
    "HEADER",
    "IGNORED_FIELDS",
    "CachePolicy",
    "CacheStore",
    "MemoryCacheStore",
    "RedisCacheStore",
    "assembled_response",
    "cache_key",
]


def cache_key(op: str, route_id: str, tenant: str, body: Json) -> str | None:
    """The store key of a request, or None when its body cannot be put in canonical form."""
    material = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    try:
        canonical = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):  # e.g. integers beyond 64 bits
        return None
    digest = hashlib.sha256(f"{KEY_VERSION}\0{op}\0{route_id}\0".encode())
    digest.update(canonical)
    return f"{KEY_PREFIX}{{{tenant}}}:{digest.hexdigest()}"


@functools.lru_cache(maxsize=256)
def _ttl_seconds(ttl: str) -> float:
    return parse_duration(ttl)


def _single_choice(op: str, body: Json) -> bool:
    """Whether the answer has exactly one choice (so a stream of it assembles into one)."""
    n = body.get("n")
    if n not in (None, 1):
        return False
    if op == "completion":
        prompt = body.get("prompt")
        return isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) == 1)
    return True


def assembled_response(call: Call, outcome: Outcome) -> Json | None:
    """The full response a completed stream amounts to, or None when the gateway does not
    assemble it faithfully (tool calls, logprobs, several choices)."""
    body = call.body
    if (
        call.op == "embeddings"
        or outcome.finish_reason in _NOT_ASSEMBLED
        or body.get("logprobs")
        or body.get("top_logprobs")
        or not _single_choice(call.op, body)
    ):
        return None
    finish = outcome.finish_reason or "stop"
    choice: Json
    if call.op == "chat":
        kind, prefix = "chat.completion", "chatcmpl-"
        message = {"role": "assistant", "content": outcome.text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    else:
        kind, prefix = "text_completion", "cmpl-"
        choice = {"index": 0, "text": outcome.text, "logprobs": None, "finish_reason": finish}
    response: Json = {
        "id": prefix + call.request_id,
        "object": kind,
        "created": int(time.time()),
        "model": outcome.model or str(body.get("model", "")),
        "choices": [choice],
    }
    usage = outcome.usage
    if usage is not None and usage.source == "provider":  # never store a guess as usage
        response["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    return response


def _decode(raw: bytes) -> Json | None:
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class CachePolicy(Policy):
    name = "cache"

    def __init__(self, stores: Stores, store: CacheStore | None = None) -> None:
        super().__init__(stores)
        if store is None:
            redis = stores.redis
            store = RedisCacheStore(redis) if redis is not None else MemoryCacheStore()
        self.store: CacheStore = store

    def enabled(self, route: RouteConfig) -> bool:
        return route.cache is not None and route.cache.enabled

    async def before(self, call: Call) -> Json | None:
        key = cache_key(call.op, call.route.id, call.caller.tenant, call.body)
        if key is None:
            call.headers[HEADER] = "miss"
            return None
        call.state[self.name] = key
        if call.cache_bypass:
            call.headers[HEADER] = "bypass"
            return None
        raw = await self.store.get(key)
        answer = _decode(raw) if raw is not None else None
        if answer is not None and call.stream and len(answer.get("choices") or ()) != 1:
            answer = None  # a stream replays one choice: not this entry
        call.headers[HEADER] = "miss" if answer is None else "hit"
        return answer

    async def after(self, call: Call, outcome: Outcome) -> None:
        key = call.state.get(self.name)
        if (
            key is None
            or outcome.cached
            or outcome.error is not None
            or not outcome.completed
            or call.route.cache is None
        ):
            return
        response = outcome.response
        if response is None and call.stream:
            response = assembled_response(call, outcome)
        if response is None:
            return
        data = orjson.dumps(response)
        if len(data) > self.stores.settings.cache_max_bytes:
            log.debug("response cache: %d bytes is over cache_max_bytes, not stored", len(data))
            return
        await self.store.set(key, data, _ttl_seconds(call.route.cache.ttl))
