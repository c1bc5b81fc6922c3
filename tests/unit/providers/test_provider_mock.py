"""The mock provider keeps the promises of its module docstring."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from fakes import run
from kanal.gateway.providers import ADAPTERS, CallOptions, FailureKind, Upstream, UpstreamError
from kanal.gateway.providers.mock import embedding

MOCK = ADAPTERS["mock"]
OPTS = CallOptions(timeout=1.0)
# no network: the session is never touched
UP = Upstream("demo/mock", "mock://", object())  # type: ignore[arg-type]


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "text", "text": "  two plus two?"},
                ],
            },
        ],
        **extra,
    }


async def collect(body: dict[str, Any], completion: bool = False) -> list[dict[str, Any]]:
    stream = MOCK.completion_stream if completion else MOCK.chat_stream
    return [c async for c in stream(UP, body, OPTS)]


def test_chat_echoes_the_last_user_message() -> None:
    answer = run(MOCK.chat(UP, chat(), OPTS))
    choice = answer["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Mock reply from tiny: What is two plus two?",
    }
    assert choice["finish_reason"] == "stop"
    # prompt: 2 + 2 + 2 + 5 words; reply: 9 words
    assert answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}
    assert answer["id"] == run(MOCK.chat(UP, chat(), OPTS))["id"]  # deterministic


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_reply_is_cut_to_max_tokens_words(field: str) -> None:
    answer = run(MOCK.chat(UP, chat(**{field: 4}), OPTS))
    assert answer["choices"][0]["message"]["content"] == "Mock reply from tiny:"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 4


def test_stream_is_word_by_word_then_finish_then_usage() -> None:
    chunks = run(collect(chat()))
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    words = [d["content"] for d in deltas[1:-1]]
    assert words == ["Mock", " reply", " from", " tiny:", " What", " is", " two", " plus", " two?"]
    assert deltas[-1] == {} and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 20
    unary = run(MOCK.chat(UP, chat(), OPTS))
    assert "".join(words) == unary["choices"][0]["message"]["content"]
    assert {c["id"] for c in chunks} == {unary["id"]}


def test_no_user_message() -> None:
    answer = run(MOCK.chat(UP, {"model": "m", "messages": []}, OPTS))
    assert answer["choices"][0]["message"]["content"] == "Mock reply from m:"
    assert answer["usage"]["prompt_tokens"] == 0


def test_completions_echo_each_prompt() -> None:
    body = {"model": "inst", "prompt": ["one two", "three"], "max_tokens": 5}
    answer = run(MOCK.completion(UP, body, OPTS))
    assert [c["text"] for c in answer["choices"]] == [
        "Mock completion from inst: one",
        "Mock completion from inst: three",
    ]
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "stop"]
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}
    chunks = run(collect(body, completion=True))
    assert all(c["object"] == "text_completion" for c in chunks)
    first = "".join(c["choices"][0]["text"] for c in chunks[:-1] if c["choices"][0]["index"] == 0)
    assert first == answer["choices"][0]["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]


def test_embeddings_are_deterministic_unit_vectors() -> None:
    answer = run(MOCK.embeddings(UP, {"model": "e", "input": ["hello world", "x"]}, OPTS))
    vectors = [d["embedding"] for d in answer["data"]]
    assert len(vectors[0]) == 16 and vectors[0] != vectors[1]
    assert vectors[0] == embedding("hello world")
    assert math.isclose(sum(v * v for v in vectors[0]), 1.0)
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    wide = run(MOCK.embeddings(UP, {"model": "e", "input": "x", "dimensions": 100}, OPTS))
    assert len(wide["data"][0]["embedding"]) == 100

    packed = run(
        MOCK.embeddings(UP, {"model": "e", "input": "x", "encoding_format": "base64"}, OPTS)
    )
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack("<16f", raw)) == pytest.approx(vectors[1])


@pytest.mark.parametrize(
    ("model", "kind", "retry_after"),
    [
        ("error-503", FailureKind.SERVER, None),
        ("error-429", FailureKind.RATE_LIMITED, 1.0),
        ("error-401", FailureKind.AUTH, None),
        ("error-400", FailureKind.CLIENT, None),
    ],
)
def test_error_models_fail_on_purpose(
    model: str, kind: FailureKind, retry_after: float | None
) -> None:
    for call in (
        lambda: MOCK.chat(UP, chat(model=model), OPTS),
        lambda: collect(chat(model=model)),
        lambda: MOCK.embeddings(UP, {"model": model, "input": "x"}, OPTS),
    ):
        with pytest.raises(UpstreamError) as info:
            run(call())
        assert info.value.kind is kind and info.value.retry_after == retry_after
        assert info.value.status == int(model[-3:])


def test_other_models_named_error_are_normal() -> None:
    answer = run(MOCK.chat(UP, chat(model="error-handler"), OPTS))
    assert answer["choices"][0]["finish_reason"] == "stop"
