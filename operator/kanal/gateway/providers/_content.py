"""Helpers for reading OpenAI message bodies, shared by the translating adapters."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

import orjson

from .base import FailureKind, Json, UpstreamError


def client_error(provider: str, what: str) -> UpstreamError:
    """A request the provider cannot express: refused before any call, like a 400."""
    return UpstreamError(FailureKind.CLIENT, f"provider {provider}: {what}", status=400)


def text_of(content: Any) -> str:
    """The text of an OpenAI ``content``: a string, or the text parts of a list, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def tool_arguments(provider: str, function: Json) -> Json:
    """The ``arguments`` of a tool call's ``function``, parsed (none: ``{}``); refused like
    a 400 unless they are a JSON object."""
    args = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        raise client_error(provider, "tool call arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise client_error(provider, "tool call arguments must be a JSON object")
    return parsed


def max_output_tokens(body: Json) -> int | None:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return value if isinstance(value, int) else None


def stop_list(body: Json) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return [s for s in stop if isinstance(s, str)]
    return None


def data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:<type>;base64,<data>`` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def image_url_of(part: Json) -> str:
    image = part.get("image_url")
    if isinstance(image, dict):
        url = image.get("url")
        return url if isinstance(url, str) else ""
    return image if isinstance(image, str) else ""


_UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "additionalProperties", "strict", "$id"})


def strip_schema(schema: Any) -> Any:
    """A JSON schema without the keys OpenAPI-subset schemas (Gemini) reject."""
    if isinstance(schema, dict):
        out: Json = {}
        for key, value in schema.items():
            if key in _UNSUPPORTED_SCHEMA_KEYS:
                continue
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                out[key] = {name: strip_schema(sub) for name, sub in value.items()}
            else:
                out[key] = strip_schema(value)
        return out
    if isinstance(schema, list):
        return [strip_schema(v) for v in schema]
    return schema


def encode_embedding(values: Sequence[float], encoding_format: Any) -> list[float] | str:
    """OpenAI's ``encoding_format``: floats, or ``base64`` of little-endian float32 (what the
    openai SDK asks for by default)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


def embedding_inputs(provider: str, body: Json) -> list[str]:
    """The texts of an embeddings request (token-id inputs are refused)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise client_error(provider, "embeddings input must be a string or a list of strings")
