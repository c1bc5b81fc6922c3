"""Every network adapter against its fake: the same answers and the same failure kinds.

One matrix, four wire formats (OpenAI, Azure OpenAI, Anthropic, Gemini), all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from provider_cases import (
    CASES,
    KEY,
    OPTS,
    Case,
    chat_body,
    collect,
    failure,
    serve,
    stream_failure,
    text_of,
)

from fakes import DEFAULT_TEXT, Fault, ToolCall, kanal_upstream, refused_url, run
from kanal.gateway.providers import CallOptions, FailureKind

pytestmark = pytest.mark.parametrize("case", CASES, ids=str)

SHORT = 0.15
"""Seconds for the timeout tests: long enough for 127.0.0.1, short enough to be cheap."""


# -- success ---------------------------------------------------------------------------------


def test_chat_returns_openai_shape_with_usage(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.ok("Hi there friend", prompt_tokens=9, completion_tokens=3))
            answer = await case.adapter.chat(up, chat_body(), OPTS)
        assert answer["object"] == "chat.completion"
        choice = answer["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"] == "Hi there friend"
        assert choice["finish_reason"] == "stop"
        usage = answer["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (9, 3)
        assert usage["total_tokens"] == 12

    run(main())


def test_stream_yields_chunks_in_order_and_usage_last(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.ok(prompt_tokens=7, completion_tokens=5))
            chunks = await collect(case.adapter.chat_stream(up, chat_body(), OPTS))
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert text_of(chunks) == DEFAULT_TEXT
        contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
        assert [p for p in contents if p] == ["Hello", " from", " the", " fake", " upstream."]
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
        assert finishes[-1] == "stop" and not any(finishes[:-1])
        last = chunks[-1]
        assert last["choices"] == []
        usage = last["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
            7,
            5,
            12,
        )
        assert all("usage" not in c for c in chunks[:-1])
        assert len({c["id"] for c in chunks}) == 1

    run(main())


def test_stream_chunks_arrive_before_the_answer_ends(case: Case) -> None:
    """Never buffered: the first chunks are yielded while the upstream is still paused."""

    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.ok(pause_after=4))
            chunks = case.adapter.chat_stream(up, chat_body(), OPTS)
            first = await asyncio.wait_for(anext(chunks), 1.0)
            assert first["choices"][0]["delta"].get("role") == "assistant"
            fake.resume()
            rest = await collect(chunks)
        assert text_of([first, *rest]) == DEFAULT_TEXT
        assert rest[-1]["choices"] == [] and rest[-1]["usage"]["completion_tokens"] == 5

    run(main())


def test_tool_calls_round_trip(case: Case) -> None:
    call = ToolCall("get_weather", {"city": "Paris", "days": 2}, id="call_1")
    body = chat_body(
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                        "required": ["city"],
                    },
                },
            }
        ]
    )

    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.ok("", tool_calls=[call]), Fault.ok("", tool_calls=[call]))
            answer = await case.adapter.chat(up, body, OPTS)
            chunks = await collect(case.adapter.chat_stream(up, body, OPTS))
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (tc,) = choice["message"]["tool_calls"]
        assert tc["type"] == "function" and tc["function"]["name"] == "get_weather"
        assert orjson.loads(tc["function"]["arguments"]) == {"city": "Paris", "days": 2}

        deltas = [
            d
            for c in chunks
            if c["choices"]
            for d in c["choices"][0]["delta"].get("tool_calls") or ()
        ]
        assert {d["index"] for d in deltas} == {0}
        assert [d["function"]["name"] for d in deltas if d.get("id")] == ["get_weather"]
        arguments = "".join(d["function"].get("arguments", "") for d in deltas)
        assert orjson.loads(arguments) == {"city": "Paris", "days": 2}
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == "tool_calls"
        assert chunks[-1]["choices"] == []

    run(main())


def test_length_finish_reason(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.ok("cut", finish_reason="length"))
            answer = await case.adapter.chat(up, chat_body(), OPTS)
        assert answer["choices"][0]["finish_reason"] == "length"

    run(main())


# -- HTTP errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    ("fault", "kind", "status", "retry_after"),
    [
        (Fault.status(500), FailureKind.SERVER, 500, None),
        (Fault.status(503), FailureKind.SERVER, 503, None),
        (Fault.rate_limited(7), FailureKind.RATE_LIMITED, 429, 7.0),
        (Fault.status(400, "that model does not exist"), FailureKind.CLIENT, 400, None),
        (Fault.status(404), FailureKind.CLIENT, 404, None),
        (Fault.status(401), FailureKind.AUTH, 401, None),
        (Fault.status(403), FailureKind.AUTH, 403, None),
    ],
    ids=["500", "503", "429", "400", "404", "401", "403"],
)
def test_http_error_maps_to_kind(
    case: Case,
    stream: bool,
    fault: Fault,
    kind: FailureKind,
    status: int,
    retry_after: float | None,
) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(fault)
            if stream:
                received, err = await stream_failure(
                    case.adapter.chat_stream(up, chat_body(), OPTS)
                )
                assert received == []
            else:
                err = await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert err.kind is kind
        assert err.status == status
        assert err.retry_after == retry_after
        assert f"team-a/{case.provider}" in err.message
        assert f"HTTP {status}" in err.message
        if fault.message:  # the upstream's own message is relayed
            assert fault.message in err.message

    run(main())


def test_upstream_rejecting_the_key_is_auth(case: Case) -> None:
    async def main() -> None:
        async with (
            case.fake_class(api_key=KEY) as fake,
            kanal_upstream(case.base_url(fake), api_key="sk-wrong-key-000000") as up,
        ):
            err = await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.AUTH
        assert "sk-wrong-key-000000" not in err.message

    run(main())


# -- connection faults -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_connection_refused_is_connect(case: Case, stream: bool) -> None:
    async def main() -> None:
        async with kanal_upstream(refused_url(""), api_key=KEY, backend_id="team-a/down") as up:
            if stream:
                _, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS))
            else:
                err = await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.CONNECT
        assert "team-a/down" in err.message and err.status is None

    run(main())


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    "fault", [Fault.reset(), Fault.disconnect(after=None)], ids=["reset", "disconnect"]
)
def test_connection_lost_before_a_response_is_connect(
    case: Case, fault: Fault, stream: bool
) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(fault)
            if stream:
                _, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS))
            else:
                err = await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.CONNECT

    run(main())


@pytest.mark.parametrize(
    "fault", [Fault.reset(after=3), Fault.disconnect(after=3)], ids=["reset", "disconnect"]
)
def test_connection_lost_mid_stream_is_server(case: Case, fault: Fault) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(fault)
            received, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS))
        assert err.kind is FailureKind.SERVER
        assert received, "chunks sent before the fault are delivered first"
        assert all(c["choices"] for c in received), "no usage chunk for a broken stream"

    run(main())


@pytest.mark.parametrize(
    "fault", [Fault.reset(after=0), Fault.disconnect(after=0)], ids=["reset", "disconnect"]
)
def test_connection_lost_mid_body_is_server(case: Case, fault: Fault) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(fault)
            err = await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.SERVER

    run(main())


def test_stream_ended_before_its_end_is_server(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.truncate(after=3))
            _, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS))
        assert err.kind is FailureKind.SERVER
        assert "ended" in err.message

    run(main())


# -- timeouts --------------------------------------------------------------------------------


def test_no_answer_within_timeout_is_timeout(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.hang())
            started = time.monotonic()
            err = await failure(case.adapter.chat(up, chat_body(), CallOptions(timeout=SHORT)))
            assert time.monotonic() - started < 2
        assert err.kind is FailureKind.TIMEOUT

    run(main())


@pytest.mark.parametrize("after", [None, 2], ids=["before-headers", "mid-stream"])
def test_stream_silent_longer_than_idle_timeout_is_timeout(case: Case, after: int | None) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.hang(after=after))
            opts = CallOptions(timeout=10.0, idle_timeout=SHORT)
            started = time.monotonic()
            _, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), opts))
            assert time.monotonic() - started < 2
        assert err.kind is FailureKind.TIMEOUT
        assert "while streaming" in err.message if after else "waiting" in err.message

    run(main())


def test_stream_longer_than_total_timeout_is_timeout(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            # the first frame must beat the total timeout even on a loaded machine, while the
            # whole stream (5+ frames, 2*SHORT apart) takes well over it
            fake.script(Fault.ok(event_delay=2 * SHORT))
            opts = CallOptions(timeout=4 * SHORT, idle_timeout=5.0)
            received, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), opts))
        assert err.kind is FailureKind.TIMEOUT
        assert received

    run(main())


# -- protocol violations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault", [Fault.malformed_json(), Fault.malformed_sse()], ids=["truncated-json", "html"]
)
def test_malformed_body_is_protocol(case: Case, fault: Fault) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(fault)
            err = await failure(case.adapter.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.PROTOCOL

    run(main())


@pytest.mark.parametrize(
    "fault",
    [Fault.malformed_json(after=2), Fault.malformed_sse(after=2), Fault.malformed_sse(after=0)],
    ids=["bad-json-event", "not-sse-mid", "not-sse-at-start"],
)
def test_malformed_stream_is_protocol(case: Case, fault: Fault) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(fault)
            _, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS))
        assert err.kind is FailureKind.PROTOCOL
        assert "malformed" in err.message

    run(main())


def test_error_event_in_stream_maps_to_its_kind(case: Case) -> None:
    async def main() -> None:
        async with serve(case) as (fake, up):
            fake.script(Fault.stream_error(after=3, code=500, message="backend melted"))
            received, err = await stream_failure(case.adapter.chat_stream(up, chat_body(), OPTS))
        assert err.kind is FailureKind.SERVER
        assert "backend melted" in err.message
        assert received

    run(main())


def test_connection_is_reused_after_a_stream(case: Case) -> None:
    """Streams are drained to their end, so the pooled connection goes back to the pool."""

    async def main() -> None:
        async with serve(case) as (fake, up):
            for _ in range(3):
                await collect(case.adapter.chat_stream(up, chat_body(), OPTS))
                await case.adapter.chat(up, chat_body(), OPTS)
        assert len(fake.requests) == 6
        assert len({r.peer_port for r in fake.requests}) == 1, "one pooled connection"

    run(main())
