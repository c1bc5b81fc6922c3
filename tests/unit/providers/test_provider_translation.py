"""Pure request/response translation: OpenAI bodies to Anthropic and Gemini and back."""

from __future__ import annotations

from typing import Any

import pytest

from kanal.gateway.providers import FailureKind, UpstreamError
from kanal.gateway.providers.anthropic import from_anthropic, to_anthropic
from kanal.gateway.providers.gemini import from_gemini, to_gemini
from kanal.gateway.providers.openai import streamed, unstreamed


def user(content: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


# -- OpenAI ----------------------------------------------------------------------------------


def test_openai_bodies() -> None:
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"a": 1}}
    assert unstreamed(body) == {"model": "m", "messages": []}
    plain = {"model": "m"}
    assert unstreamed(plain) is plain  # nothing to strip: no copy
    assert streamed(plain) == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert streamed(body)["stream_options"] == {"a": 1, "include_usage": True}


# -- Anthropic -------------------------------------------------------------------------------


def test_anthropic_content_parts() -> None:
    out = to_anthropic(
        user(
            [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
            ]
        )
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_anthropic_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    body = user("hi")
    body["tools"] = [{"type": "function", "function": {"name": "f"}}]
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = to_anthropic(body)
    assert out.get("tool_choice") == expected
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_anthropic_max_tokens_precedence_and_stop() -> None:
    body = {**user("hi"), "max_tokens": 10, "max_completion_tokens": 20, "stop": ["a", "b"]}
    out = to_anthropic(body)
    assert out["max_tokens"] == 20 and out["stop_sequences"] == ["a", "b"]
    assert "system" not in out and "stream" not in out
    assert to_anthropic(body, stream=True)["stream"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "function", "content": "x"}]},
        user([{"type": "input_audio", "input_audio": {}}]),
        user([{"type": "image_url", "image_url": {"url": "ftp://x"}}]),
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ],
        },
    ],
    ids=["role", "audio", "url-scheme", "bad-arguments"],
)
def test_anthropic_refuses_what_it_cannot_express(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as info:
        to_anthropic(body)
    assert info.value.kind is FailureKind.CLIENT and info.value.status == 400


def test_from_anthropic_text_and_tools() -> None:
    answer = from_anthropic(
        {
            "id": "msg_1",
            "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "Let me check. "},
                {"type": "text", "text": "One moment."},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
    )
    message = answer["choices"][0]["message"]
    assert message["content"] == "Let me check. One moment."
    assert message["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    ]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert answer["id"] == "msg_1" and answer["model"] == "claude"


def test_from_anthropic_tool_only_has_null_content() -> None:
    answer = from_anthropic(
        {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "usage": {}}
    )
    assert answer["choices"][0]["message"]["content"] is None


# -- Gemini ----------------------------------------------------------------------------------


def test_gemini_merges_turns_and_skips_empty_ones() -> None:
    out = to_gemini(
        {
            "model": "g",
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": ""},
                {"role": "developer", "content": "dev note"},
            ],
            "n": 2,
            "presence_penalty": 0.5,
        }
    )
    assert out["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]
    assert out["systemInstruction"] == {"parts": [{"text": "dev note"}]}
    assert out["generationConfig"] == {"candidateCount": 2, "presencePenalty": 0.5}


def test_gemini_json_schema_is_stripped_for_openapi() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"strict": {"type": "boolean"}, "n": {"type": "integer"}},
        "additionalProperties": False,
    }
    out = to_gemini(
        {
            **user("hi"),
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        }
    )
    assert out["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "object",
            "properties": {"strict": {"type": "boolean"}, "n": {"type": "integer"}},
        },
    }


def test_gemini_tool_message_without_its_call_is_refused() -> None:
    with pytest.raises(UpstreamError) as info:
        to_gemini(
            {"model": "g", "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]}
        )
    assert info.value.kind is FailureKind.CLIENT


def test_from_gemini_candidates_usage_and_blocked_prompt() -> None:
    answer = from_gemini(
        {
            "candidates": [
                {
                    "content": {"parts": [{"text": "thinking", "thought": True}, {"text": "A"}]},
                    "finishReason": "MAX_TOKENS",
                },
                {"content": {"parts": [{"text": "B"}]}, "finishReason": "RECITATION", "index": 1},
            ],
            "usageMetadata": {
                "promptTokenCount": 5,
                "candidatesTokenCount": 2,
                "thoughtsTokenCount": 7,
                "cachedContentTokenCount": 3,
            },
            "modelVersion": "gemini-2.5-flash-001",
        },
        "gemini-2.5-flash",
    )
    assert [c["message"]["content"] for c in answer["choices"]] == ["A", "B"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "content_filter"]
    assert answer["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 9,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 7},
    }
    assert answer["model"] == "gemini-2.5-flash-001"

    blocked = from_gemini({"promptFeedback": {"blockReason": "SAFETY"}}, "g")
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert blocked["choices"][0]["message"]["content"] is None
