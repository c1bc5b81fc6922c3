"""The Gemini adapter against the fake Gemini API: URLs, roles, tools, usage, errors,
embeddings."""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import AsyncIterator

import orjson
import pytest
from provider_cases import KEY, OPTS, chat_body, collect, failure, stream_failure

from fakes import FakeGemini, Fault, ToolCall, fake_embedding, kanal_upstream, run
from kanal.gateway.providers import ADAPTERS, FailureKind, Upstream

GEMINI = ADAPTERS["gemini"]


@contextlib.asynccontextmanager
async def gemini(
    base_suffix: str = "/v1beta", api_key: str | None = KEY, fake_key: str | None = KEY
) -> AsyncIterator[tuple[FakeGemini, Upstream]]:
    async with (
        FakeGemini(api_key=fake_key) as fake,
        kanal_upstream(fake.root + base_suffix, api_key=api_key) as up,
    ):
        yield fake, up


def test_urls_and_key_header() -> None:
    async def main() -> None:
        async with gemini() as (fake, up):
            await GEMINI.chat(up, chat_body("gemini-2.0-flash"), OPTS)
            await collect(GEMINI.chat_stream(up, chat_body("models/gemini-2.0-flash"), OPTS))
        unary, streamed = fake.requests
        assert unary.path == "/v1beta/models/gemini-2.0-flash:generateContent"
        assert unary.query == {}
        assert streamed.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
        assert streamed.query == {"alt": "sse"}
        for r in fake.requests:
            assert r.header("x-goog-api-key") == KEY

    run(main())


def test_base_without_a_version_gets_v1beta() -> None:
    async def main() -> None:
        async with gemini(base_suffix="") as (fake, up):
            await GEMINI.chat(up, chat_body("g"), OPTS)
        assert fake.last.path == "/v1beta/models/g:generateContent"

    run(main())


def test_roles_system_instruction_and_generation_config() -> None:
    body = {
        "model": "gemini-2.0-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Describe"}]},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
                ],
            },
        ],
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.8,
        "stop": ["END", "STOP"],
        "seed": 3,
        "response_format": {"type": "json_object"},
    }

    async def main() -> None:
        async with gemini() as (fake, up):
            await GEMINI.chat(up, body, OPTS)
        assert fake.last.body == {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello!"}]},
                {
                    "role": "user",
                    "parts": [
                        {"text": "Describe"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                    ],
                },
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {
                "maxOutputTokens": 100,
                "temperature": 0.2,
                "topP": 0.8,
                "seed": 3,
                "stopSequences": ["END", "STOP"],
                "responseMimeType": "application/json",
            },
        }

    run(main())


def test_tools_and_function_responses() -> None:
    body = {
        "model": "gemini-2.0-flash",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": '{"temp": 18}'},
            {"role": "tool", "tool_call_id": "call_9", "content": "plain text"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }

    async def main() -> None:
        async with gemini() as (fake, up):
            fake.script(Fault.ok("", tool_calls=[ToolCall("weather", {"city": "Lyon"})]))
            answer = await GEMINI.chat(up, body, OPTS)
        sent = fake.last.body
        assert sent["contents"][1] == {
            "role": "model",
            "parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}],
        }
        assert sent["contents"][2] == {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "weather", "response": {"content": "plain text"}}},
            ],
        }
        assert sent["tools"] == [
            {
                "functionDeclarations": [
                    {
                        "name": "weather",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    }
                ]
            }
        ]
        assert sent["toolConfig"] == {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}
        }
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_") and call["function"]["name"] == "weather"
        assert orjson.loads(call["function"]["arguments"]) == {"city": "Lyon"}

    run(main())


def test_safety_stop_is_content_filter() -> None:
    async def main() -> None:
        async with gemini() as (fake, up):
            fake.script(Fault.ok("", finish_reason="SAFETY"), Fault.ok("", finish_reason="SAFETY"))
            answer = await GEMINI.chat(up, chat_body(), OPTS)
            chunks = await collect(GEMINI.chat_stream(up, chat_body(), OPTS))
        assert answer["choices"][0]["finish_reason"] == "content_filter"
        assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter"

    run(main())


def test_streamed_usage_is_the_last_cumulative_report() -> None:
    async def main() -> None:
        async with gemini() as (fake, up):
            fake.script(Fault.ok("one two three four", prompt_tokens=6, completion_tokens=4))
            chunks = await collect(GEMINI.chat_stream(up, chat_body(), OPTS))
        assert len(chunks) == 5  # four text chunks, then usage
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 6,
            "completion_tokens": 4,
            "total_tokens": 10,
        }

    run(main())


@pytest.mark.parametrize(
    ("api_key", "kind", "status"),
    [("wrong-key", FailureKind.AUTH, 400), (None, FailureKind.AUTH, 403)],
    ids=["invalid-key", "missing-key"],
)
def test_key_problems_are_auth(api_key: str | None, kind: FailureKind, status: int) -> None:
    async def main() -> None:
        async with gemini(api_key=api_key) as (_fake, up):
            err = await failure(GEMINI.chat(up, chat_body(), OPTS))
        assert err.kind is kind and err.status == status

    run(main())


def test_retry_info_is_the_retry_hint() -> None:
    async def main() -> None:
        async with gemini() as (fake, up):
            fake.script(Fault.rate_limited(37))
            err = await failure(GEMINI.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.RATE_LIMITED and err.retry_after == 37.0

    run(main())


def test_error_in_stream_maps_by_code() -> None:
    async def main() -> None:
        async with gemini() as (fake, up):
            fake.script(Fault.stream_error(after=2, code=429, message="quota"))
            received, err = await stream_failure(GEMINI.chat_stream(up, chat_body(), OPTS))
        assert err.kind is FailureKind.RATE_LIMITED and err.status == 429
        assert len(received) == 2

    run(main())


def test_embeddings_batch() -> None:
    async def main() -> None:
        async with gemini() as (fake, up):
            answer = await GEMINI.embeddings(
                up, {"model": "text-embedding-004", "input": ["a", "b"], "dimensions": 4}, OPTS
            )
            packed = await GEMINI.embeddings(
                up, {"model": "text-embedding-004", "input": "a", "encoding_format": "base64"}, OPTS
            )
            first = fake.requests[0]
        assert first.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
        assert first.body == {
            "requests": [
                {
                    "model": "models/text-embedding-004",
                    "content": {"parts": [{"text": "a"}]},
                    "outputDimensionality": 4,
                },
                {
                    "model": "models/text-embedding-004",
                    "content": {"parts": [{"text": "b"}]},
                    "outputDimensionality": 4,
                },
            ]
        }
        assert answer["object"] == "list" and answer["model"] == "text-embedding-004"
        assert [d["embedding"] for d in answer["data"]] == [
            fake_embedding("a", 4),
            fake_embedding("b", 4),
        ]
        assert [d["index"] for d in answer["data"]] == [0, 1]
        assert "usage" not in answer  # Gemini reports none: the gateway estimates
        raw = base64.b64decode(packed["data"][0]["embedding"])
        assert list(struct.unpack("<8f", raw)) == pytest.approx(fake_embedding("a"))

    run(main())


def test_images_by_url_are_refused_without_a_call() -> None:
    body = chat_body()
    body["messages"].append(
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
        }
    )

    async def main() -> None:
        async with gemini() as (fake, up):
            err = await failure(GEMINI.chat(up, body, OPTS))
            assert fake.requests == []
        assert err.kind is FailureKind.CLIENT

    run(main())
