"""Offline token estimates: cheap, no tokenizer download, good enough for reservations.

Provider-reported usage always settles; an estimate stands in only when a provider
reports nothing (and is then marked as such)."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4  # role and framing overhead per chat message


def estimate_text(text: str) -> int:
    return (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return 0


def estimate_messages(messages: list[Json]) -> int:
    chars = 0
    for message in messages:
        chars += _content_chars(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            chars += len(function.get("name", "")) + len(function.get("arguments", ""))
    return (chars + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN + _PER_MESSAGE * len(messages)


def estimate_prompt(op: str, body: Json) -> int:
    if op == "chat":
        return estimate_messages(body.get("messages") or [])
    if op == "completion":
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        return sum(estimate_text(t) for t in texts if isinstance(t, str))
    data = body.get("input")
    if isinstance(data, str):
        return estimate_text(data)
    if isinstance(data, list) and data and isinstance(data[0], str):
        return sum(estimate_text(t) for t in data)
    if isinstance(data, list) and data and isinstance(data[0], int):
        return len(data)
    return sum(len(x) for x in data or [] if isinstance(x, list))
