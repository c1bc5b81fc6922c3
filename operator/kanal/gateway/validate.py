"""Checks on request bodies, cheap enough for the hot path; 400 names the bad field."""

from __future__ import annotations

from typing import Any

from kanal.gateway.errors import bad_request

Json = dict[str, Any]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _model(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "model")
    return model


def _common(body: Json) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("stream_options must be an object", "stream_options")
        if not stream:
            raise bad_request(
                "stream_options is only allowed when stream is true", "stream_options"
            )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise bad_request(f"{name} must be a positive integer", name)
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float)
        or isinstance(temperature, bool)
        or not 0 <= temperature <= 2
    ):
        raise bad_request("temperature must be a number between 0 and 2", "temperature")
    top_p = body.get("top_p")
    if top_p is not None and (
        not isinstance(top_p, int | float) or isinstance(top_p, bool) or not 0 <= top_p <= 1
    ):
        raise bad_request("top_p must be a number between 0 and 1", "top_p")
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("n must be 1: kanal returns one choice per request", "n")


def chat(body: Json) -> str:
    """Validates a chat completion request; returns its model."""
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request("each message must be an object", f"messages[{index}]")
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(
                f"role must be one of {', '.join(sorted(_ROLES))}", f"messages[{index}].role"
            )
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise bad_request("content is required", f"messages[{index}].content")
        elif not isinstance(content, str | list):
            raise bad_request(
                "content must be a string or an array of content parts",
                f"messages[{index}].content",
            )
    _common(body)
    return model


def completion(body: Json) -> str:
    model = _model(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) and not (
        isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
    ):
        raise bad_request("prompt must be a string or an array of strings", "prompt")
    _common(body)
    return model


def embeddings(body: Json) -> str:
    model = _model(body)
    data = body.get("input")
    valid = isinstance(data, str) or (
        isinstance(data, list)
        and data
        and (
            all(isinstance(x, str) for x in data)
            or all(isinstance(x, int) for x in data)
            or all(isinstance(x, list) for x in data)
        )
    )
    if not valid:
        raise bad_request("input must be a string or an array of strings or tokens", "input")
    return model
