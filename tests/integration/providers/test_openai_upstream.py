"""OpenAI, OpenAI-compatible and Azure OpenAI adapters: what goes on the wire, and the
normalization of what comes back."""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from aiohttp import web
from provider_cases import KEY, OPTS, chat_body, collect, failure, stream_failure, text_of

from fakes import FakeOpenAI, Fault, fake_embedding, kanal_upstream, run
from kanal.gateway.providers import ADAPTERS, FailureKind, Upstream

OPENAI = ADAPTERS["openai"]
COMPATIBLE = ADAPTERS["openai-compatible"]
AZURE = ADAPTERS["azure-openai"]


@contextlib.asynccontextmanager
async def openai(
    api_key: str | None = KEY, azure: bool = False, api_version: str | None = None
) -> AsyncIterator[tuple[FakeOpenAI, Upstream]]:
    async with FakeOpenAI(api_key=api_key) as fake:
        url = fake.azure_url if azure else fake.url
        async with kanal_upstream(url, api_key=api_key, api_version=api_version) as up:
            yield fake, up


# -- OpenAI ----------------------------------------------------------------------------------


def test_body_is_passed_through_with_stream_fields_matching_the_call() -> None:
    body = chat_body(temperature=0.3, seed=7, stream=True, stream_options={"include_usage": False})

    async def main() -> None:
        async with openai() as (fake, up):
            await OPENAI.chat(up, body, OPTS)
            unary = fake.last
            await collect(OPENAI.chat_stream(up, {**body, "stream_options": {"x": 1}}, OPTS))
            streamed = fake.last
        assert unary.path == "/v1/chat/completions"
        assert unary.body == {k: v for k, v in body.items() if not k.startswith("stream")}
        assert streamed.body["stream"] is True
        assert streamed.body["stream_options"] == {"x": 1, "include_usage": True}
        assert streamed.body["seed"] == 7 and streamed.body["messages"] == body["messages"]
        assert body["stream_options"] == {"include_usage": False}, "caller's dict untouched"

    run(main())


def test_completions_unary_and_streamed() -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}

    async def main() -> None:
        async with openai() as (fake, up):
            answer = await OPENAI.completion(up, body, OPTS)
            chunks = await collect(OPENAI.completion_stream(up, body, OPTS))
            assert fake.last.path == "/v1/completions"
        assert answer["object"] == "text_completion"
        assert answer["choices"][0]["text"] == "Hello from the fake upstream."
        assert all(c["object"] == "text_completion" for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == answer["choices"][0]["text"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    run(main())


def test_embeddings_passthrough_including_base64() -> None:
    async def main() -> None:
        async with openai() as (fake, up):
            floats = await OPENAI.embeddings(
                up, {"model": "text-embedding-3-small", "input": ["a", "b"]}, OPTS
            )
            packed = await OPENAI.embeddings(
                up,
                {"model": "text-embedding-3-small", "input": "a", "encoding_format": "base64"},
                OPTS,
            )
            assert fake.last.path == "/v1/embeddings"
        assert [d["embedding"] for d in floats["data"]] == [
            fake_embedding("a"),
            fake_embedding("b"),
        ]
        assert floats["usage"]["prompt_tokens"] == 12
        raw = base64.b64decode(packed["data"][0]["embedding"])
        assert list(struct.unpack("<8f", raw)) == pytest.approx(fake_embedding("a"))

    run(main())


def test_openai_compatible_needs_no_key() -> None:
    async def main() -> None:
        async with openai(api_key=None) as (fake, up):
            answer = await COMPATIBLE.chat(up, chat_body(), OPTS)
            await collect(COMPATIBLE.chat_stream(up, chat_body(), OPTS))
        assert answer["choices"][0]["message"]["content"]
        assert all(r.header("authorization") is None for r in fake.requests)

    run(main())


def test_response_without_choices_is_protocol() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": "x", "object": "chat.completion"})

    async def main() -> None:
        async with raw_server(handler) as url, kanal_upstream(url) as up:
            err = await failure(COMPATIBLE.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.PROTOCOL

    run(main())


# -- compatible servers that bend the format -------------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[web.Request], object],
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def sse_handler(*events: object) -> Callable[[web.Request], object]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            data = event if isinstance(event, bytes) else orjson.dumps(event)
            await resp.write(b"data: " + data + b"\r\n\r\n")
        await resp.write_eof()
        return resp

    return handler


def chunk(
    delta: dict[str, object], finish: str | None = None, **extra: object
) -> dict[str, object]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_usage_on_the_last_content_chunk_moves_to_its_own_chunk() -> None:
    """llama.cpp-style: usage rides on the finish chunk, no [DONE], CRLF framing."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    handler = sse_handler(
        chunk({"role": "assistant"}, usage=None),
        chunk({"content": "Hi"}, usage=None),
        chunk({"content": "!"}, "stop", usage=usage),
    )

    async def main() -> None:
        async with raw_server(handler) as url, kanal_upstream(url) as up:
            chunks = await collect(COMPATIBLE.chat_stream(up, chat_body(), OPTS))
        assert text_of(chunks) == "Hi!"
        assert [("usage" in c) for c in chunks] == [False, False, False, True]
        assert chunks[-1] == {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "llama",
            "choices": [],
            "usage": usage,
        }

    run(main())


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"message": "slow down", "type": "rate_limit_exceeded", "code": None}, "rate-limited"),
        ({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}, "4xx"),
        ({"message": "oops", "type": "server_error"}, "5xx"),
        ({"message": "??"}, "protocol"),
    ],
)
def test_error_event_in_a_stream(error: dict[str, object], kind: str) -> None:
    handler = sse_handler(chunk({"role": "assistant"}), {"error": error})

    async def main() -> None:
        async with raw_server(handler) as url, kanal_upstream(url) as up:
            received, err = await stream_failure(COMPATIBLE.chat_stream(up, chat_body(), OPTS))
        assert len(received) == 1
        assert err.kind.value == kind
        assert str(error["message"]) in err.message

    run(main())


def test_json_answer_to_a_stream_request_is_protocol() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"message": {"content": "hi"}}]})

    async def main() -> None:
        async with raw_server(handler) as url, kanal_upstream(url) as up:
            _, err = await stream_failure(COMPATIBLE.chat_stream(up, chat_body(), OPTS))
        assert err.kind is FailureKind.PROTOCOL

    run(main())


def test_plain_text_error_body_is_quoted() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=502, text="upstream connect error or disconnect/reset")

    async def main() -> None:
        async with raw_server(handler) as url, kanal_upstream(url) as up:
            err = await failure(COMPATIBLE.chat(up, chat_body(), OPTS))
        assert err.kind is FailureKind.SERVER and err.status == 502
        assert "upstream connect error" in err.message

    run(main())


# -- Azure -----------------------------------------------------------------------------------


def test_azure_deployment_url_version_and_key_header() -> None:
    async def main() -> None:
        async with openai(azure=True) as (fake, up):
            await AZURE.chat(up, chat_body("my-gpt4o"), OPTS)
            await AZURE.completion(up, {"model": "my-instruct", "prompt": "hi"}, OPTS)
            await AZURE.embeddings(up, {"model": "my-embed", "input": "hi"}, OPTS)
        paths = [r.path for r in fake.requests]
        assert paths == [
            "/openai/deployments/my-gpt4o/chat/completions",
            "/openai/deployments/my-instruct/completions",
            "/openai/deployments/my-embed/embeddings",
        ]
        for r in fake.requests:
            assert r.query == {"api-version": "2024-10-21"}
            assert r.header("api-key") == KEY and r.header("authorization") is None

    run(main())


def test_azure_api_version_and_openai_suffix_in_base() -> None:
    async def main() -> None:
        async with FakeOpenAI(api_key=KEY) as fake:
            url = fake.azure_url + "/openai/"
            async with kanal_upstream(url, api_key=KEY, api_version="2025-01-01-preview") as up:
                await AZURE.chat(up, chat_body("dep"), OPTS)
        assert fake.last.path == "/openai/deployments/dep/chat/completions"
        assert fake.last.query == {"api-version": "2025-01-01-preview"}

    run(main())


def test_azure_stream_drops_the_prompt_filter_chunk() -> None:
    async def main() -> None:
        async with openai(azure=True) as (_fake, up):
            chunks = await collect(AZURE.chat_stream(up, chat_body("dep"), OPTS))
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c for c in chunks if c["choices"] == []] == [chunks[-1]]
        assert "usage" in chunks[-1]

    run(main())


def test_azure_error_shape() -> None:
    async def main() -> None:
        async with openai(azure=True) as (fake, up):
            fake.script(Fault.rate_limited(3, "Requests to the ChatCompletions_Create Operation"))
            err = await failure(AZURE.chat(up, chat_body("dep"), OPTS))
        assert err.kind is FailureKind.RATE_LIMITED and err.retry_after == 3
        assert "ChatCompletions_Create" in err.message

    run(main())
