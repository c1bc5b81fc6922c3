"""The Anthropic adapter against the fake Messages API: translation on the wire, streaming
events, in-stream errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from provider_cases import KEY, OPTS, chat_body, collect, failure, stream_failure

from fakes import FakeAnthropic, Fault, kanal_upstream, run
from kanal.gateway.providers import ADAPTERS, FailureKind, Upstream

ANTHROPIC = ADAPTERS["anthropic"]


@contextlib.asynccontextmanager
async def anthropic(
    base_suffix: str = "/v1", api_version: str | None = None
) -> AsyncIterator[tuple[FakeAnthropic, Upstream]]:
    async with FakeAnthropic(api_key=KEY) as fake:
        url = fake.root + base_suffix
        async with kanal_upstream(url, api_key=KEY, api_version=api_version) as up:
            yield fake, up


CONVERSATION = {
    "model": "claude-sonnet-4-5",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "required",
    "max_completion_tokens": 300,
    "stop": "END",
    "temperature": 1.7,
    "top_p": 0.9,
    "user": "user-42",
}


def test_request_is_translated_on_the_wire() -> None:
    async def main() -> None:
        async with anthropic() as (fake, up):
            await ANTHROPIC.chat(up, CONVERSATION, OPTS)
        sent = fake.last
        assert sent.path == "/v1/messages"
        assert sent.header("x-api-key") == KEY
        assert sent.header("anthropic-version") == "2023-06-01"
        assert sent.header("authorization") is None
        assert sent.body == {
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": "You are terse.\n\nUse metric units.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            "stop_sequences": ["END"],
            "temperature": 1.0,
            "top_p": 0.9,
            "tools": [
                {
                    "name": "weather",
                    "description": "Current weather",
                    "input_schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                    },
                }
            ],
            "tool_choice": {"type": "any"},
            "metadata": {"user_id": "user-42"},
        }

    run(main())


def test_base_without_version_and_custom_api_version() -> None:
    async def main() -> None:
        async with anthropic(base_suffix="", api_version="2024-01-01") as (fake, up):
            answer = await ANTHROPIC.chat(up, chat_body(), OPTS)
        assert answer["choices"][0]["message"]["content"]
        assert fake.last.path == "/v1/messages"
        assert fake.last.header("anthropic-version") == "2024-01-01"
        assert fake.last.body["max_tokens"] == 50

    run(main())


def test_stream_request_and_default_max_tokens() -> None:
    async def main() -> None:
        async with anthropic() as (fake, up):
            body = chat_body()
            del body["max_tokens"]
            await collect(ANTHROPIC.chat_stream(up, body, OPTS))
        assert fake.last.body["stream"] is True
        assert fake.last.body["max_tokens"] == 4096
        assert fake.last.body["system"] == "Be brief."

    run(main())


def test_cached_input_counts_as_prompt_tokens() -> None:
    async def main() -> None:
        async with anthropic() as (fake, up):
            fake.script(
                Fault.ok(prompt_tokens=10, completion_tokens=4, cached_tokens=90),
                Fault.ok(prompt_tokens=10, completion_tokens=4, cached_tokens=90),
            )
            answer = await ANTHROPIC.chat(up, chat_body(), OPTS)
            chunks = await collect(ANTHROPIC.chat_stream(up, chat_body(), OPTS))
        for usage in (answer["usage"], chunks[-1]["usage"]):
            assert usage["prompt_tokens"] == 100 and usage["completion_tokens"] == 4
            assert usage["total_tokens"] == 104
            assert usage["prompt_tokens_details"] == {"cached_tokens": 90}

    run(main())


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    async def main() -> None:
        async with anthropic() as (fake, up):
            fake.script(Fault.ok(finish_reason=stop_reason), Fault.ok(finish_reason=stop_reason))
            answer = await ANTHROPIC.chat(up, chat_body(), OPTS)
            chunks = await collect(ANTHROPIC.chat_stream(up, chat_body(), OPTS))
        assert answer["choices"][0]["finish_reason"] == finish
        assert chunks[-2]["choices"][0]["finish_reason"] == finish

    run(main())


@pytest.mark.parametrize(
    ("error_type", "kind", "status"),
    [
        ("overloaded_error", FailureKind.SERVER, 529),
        ("api_error", FailureKind.SERVER, 500),
        ("rate_limit_error", FailureKind.RATE_LIMITED, 429),
        ("invalid_request_error", FailureKind.CLIENT, 400),
        ("something_new", FailureKind.PROTOCOL, None),
    ],
)
def test_error_event_in_stream(error_type: str, kind: FailureKind, status: int | None) -> None:
    async def main() -> None:
        async with anthropic() as (fake, up):
            fake.script(Fault.stream_error(after=4, error_type=error_type, message="Overloaded"))
            received, err = await stream_failure(ANTHROPIC.chat_stream(up, chat_body(), OPTS))
        assert err.kind is kind and err.status == status
        assert error_type in err.message and "Overloaded" in err.message
        assert [c["choices"][0]["delta"].get("content") for c in received] == ["", "Hello"]

    run(main())


def test_529_overloaded_is_server() -> None:
    async def main() -> None:
        async with anthropic() as (fake, up):
            fake.script(Fault.status(529))
            err = await failure(ANTHROPIC.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.SERVER and err.status == 529
        assert "Overloaded" in err.message

    run(main())


def test_message_delta_without_message_stop_still_reports_usage() -> None:
    """Cut after message_delta: the answer and its usage are complete."""

    async def main() -> None:
        async with anthropic() as (fake, up):
            fake.script(Fault.truncate(after=10))  # everything but message_stop
            chunks = await collect(ANTHROPIC.chat_stream(up, chat_body(), OPTS))
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    run(main())


@pytest.mark.parametrize(
    "call",
    [
        lambda up: ANTHROPIC.completion(up, {"model": "m", "prompt": "hi"}, OPTS),
        lambda up: ANTHROPIC.embeddings(up, {"model": "m", "input": "hi"}, OPTS),
        lambda up: ANTHROPIC.chat(up, chat_body(n=2), OPTS),
        lambda up: ANTHROPIC.chat(up, chat_body(response_format={"type": "json_object"}), OPTS),
    ],
    ids=["completions", "embeddings", "n", "response_format"],
)
def test_unsupported_requests_are_refused_without_a_call(call) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with anthropic() as (fake, up):
            err = await failure(call(up))
            assert fake.requests == []
        assert err.kind is FailureKind.CLIENT and err.status == 400

    run(main())
