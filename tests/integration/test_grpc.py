"""gRPC ``kanal.v1.Gateway`` against real servers on 127.0.0.1: a real grpc client, the real
gateway serving the ``mock`` provider, and the HTTP API as the reference answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from google.protobuf import struct_pb2

from gwkit import MOCK_YAML, ThreadedGateway, snapshot_from_yaml, threaded_gateway
from kanal.gateway.grpc_service import chat_body, start_grpc, status_code
from kanal.gateway.providers import mock
from kanal.gateway.providers.base import FailureKind, UpstreamError
from kanal.gateway.service import Caller
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.telemetry import Telemetry
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

API_KEY = "sk-kanal-grpc-test-0123456789"
KEYED_YAML = (
    MOCK_YAML
    + f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: grpc-caller, labels: {{kanal.dev/api-key: "true"}}}}
data: {{key: {base64.b64encode(API_KEY.encode()).decode()}}}
"""
)


def _failing(status: int) -> str:
    """A backend and route ``fail-NNN`` whose mock model fails with HTTP NNN, no retries."""
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: mock-{status}}}
spec:
  provider: mock
  models:
    - {{name: error-{status}, contextWindow: 8192, pricing: {{inputPerMTok: 1, outputPerMTok: 1}}}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: fail-{status}}}
spec:
  backends: [{{backendRef: {{name: mock-{status}}}, model: error-{status}}}]
  retry: {{attempts: 0}}
"""


FAILING_YAML = MOCK_YAML + "".join(_failing(s) for s in (400, 429, 503, 504))


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role="user", content=text)


def chat_request(text: str = "hello over grpc", **fields: Any) -> pb.ChatRequest:
    return pb.ChatRequest(model="chat", messages=[user(text)], **fields)


@contextlib.contextmanager
def _stub(yaml_text: str) -> Iterator[tuple[pb_grpc.GatewayStub, ThreadedGateway]]:
    with (
        threaded_gateway(snapshot_from_yaml(yaml_text)) as gw,
        grpc.insecure_channel(gw.grpc_target) as channel,
    ):
        yield pb_grpc.GatewayStub(channel), gw


@pytest.fixture(scope="module")
def open_gw() -> Iterator[tuple[pb_grpc.GatewayStub, ThreadedGateway]]:
    """No key Secrets: every caller is tenant ``default``."""
    with _stub(FAILING_YAML) as pair:
        yield pair


@pytest.fixture(scope="module")
def stub(open_gw: tuple[pb_grpc.GatewayStub, ThreadedGateway]) -> pb_grpc.GatewayStub:
    return open_gw[0]


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[pb_grpc.GatewayStub, ThreadedGateway]]:
    with _stub(KEYED_YAML) as pair:
        yield pair


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=10, **kwargs)
        if not isinstance(result, pb.ChatResponse | pb.EmbedResponse | pb.ListModelsResponse):
            list(result)  # a stream: its status comes at the end
    return info.value


def trailing(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


def http(gw: ThreadedGateway, path: str, body: Any = None, key: str | None = None) -> Any:
    """(status, JSON body) of the HTTP API, or (status, list of SSE chunks) for streams."""

    async def go() -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                "GET" if body is None else "POST", gw.base_url + path, json=body, headers=headers
            ) as r,
        ):
            if r.content_type == "text/event-stream":
                events = [line[6:] for line in (await r.text()).splitlines() if line]
                assert events[-1] == "[DONE]"
                return r.status, [orjson.loads(e) for e in events[:-1]]
            return r.status, await r.json()

    return asyncio.run(go())


# -- the calls ------------------------------------------------------------------------------


def test_chat_answers_with_the_mock_reply_and_call_metadata(stub: pb_grpc.GatewayStub) -> None:
    response, call = stub.Chat.with_call(
        chat_request("hello over grpc"),
        metadata=(("x-request-id", "grpc-test-1"), ("x-session-id", "s-123")),
        timeout=10,
    )
    assert response.id.startswith("chatcmpl-mock-")
    assert response.model == "mock-small"
    assert response.created > 0
    [choice] = response.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "Mock reply from mock-small: hello over grpc"
    assert choice.finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 7)
    assert response.usage.total_tokens == 10
    metadata = dict(call.initial_metadata())
    assert metadata["x-request-id"] == "grpc-test-1"
    assert metadata["x-kanal-backend"] == "default/mock"


def test_request_id_is_generated_when_absent_or_malformed(stub: pb_grpc.GatewayStub) -> None:
    _, call = stub.Chat.with_call(chat_request(), timeout=10)
    generated = dict(call.initial_metadata())["x-request-id"]
    assert generated.startswith("req_")
    for malformed in ("has spaces in it", "x" * 129):
        _, call = stub.Chat.with_call(
            chat_request(), metadata=(("x-request-id", malformed),), timeout=10
        )
        replaced = dict(call.initial_metadata())["x-request-id"]
        assert replaced.startswith("req_") and replaced != generated


def test_typed_fields_and_extra_reach_the_backend(stub: pb_grpc.GatewayStub) -> None:
    cut = stub.Chat(chat_request("one two three four", max_tokens=2, temperature=0.5), timeout=10)
    assert cut.choices[0].message.content == "Mock reply"
    assert cut.choices[0].finish_reason == "length"
    extra = struct_pb2.Struct()
    extra.update({"max_completion_tokens": 3, "seed": 7, "response_format": {"type": "text"}})
    via_extra = stub.Chat(chat_request("a b c", extra=extra), timeout=10)
    assert via_extra.choices[0].message.content == "Mock reply from"
    assert via_extra.usage.completion_tokens == 3


def test_tool_call_turns_are_accepted(stub: pb_grpc.GatewayStub) -> None:
    call = pb.ToolCall(
        id="call_1",
        type="function",
        function=pb.FunctionCall(name="lookup", arguments='{"q": "kanal"}'),
    )
    request = pb.ChatRequest(
        model="chat",
        messages=[
            user("look it up"),
            pb.ChatMessage(role="assistant", tool_calls=[call]),  # no content: null
            pb.ChatMessage(role="tool", tool_call_id="call_1", content="found"),
            user("thanks"),
        ],
    )
    response = stub.Chat(request, timeout=10)
    assert response.choices[0].message.content == "Mock reply from mock-small: thanks"


def test_chat_stream_relays_chunks_in_order_without_usage(stub: pb_grpc.GatewayStub) -> None:
    call = stub.ChatStream(chat_request("stream me please"), timeout=10)
    chunks = list(call)
    assert dict(call.initial_metadata())["x-kanal-backend"] == "default/mock"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert text == "Mock reply from mock-small: stream me please"
    # one chunk per word, in order, then the finish chunk; usage was not asked for
    words = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert words == ["Mock", " reply", " from", " mock-small:", " stream", " me", " please"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(not c.choices[0].finish_reason for c in chunks[:-1])
    assert not any(c.HasField("usage") for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert call.code() == grpc.StatusCode.OK


def test_chat_stream_ends_with_usage_when_asked(stub: pb_grpc.GatewayStub) -> None:
    chunks = list(stub.ChatStream(chat_request("count my tokens", include_usage=True), timeout=10))
    *body, last = chunks
    assert not last.choices
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 7)
    assert last.usage.total_tokens == 10
    assert not any(c.HasField("usage") for c in body)
    assert body[-1].choices[0].finish_reason == "stop"


def test_embed_returns_one_vector_per_input(stub: pb_grpc.GatewayStub) -> None:
    response = stub.Embed(
        pb.EmbedRequest(model="chat", input=["first text", "second"], dimensions=8), timeout=10
    )
    assert response.model == "mock-small"
    assert [e.index for e in response.embeddings] == [0, 1]
    for item, text in zip(response.embeddings, ["first text", "second"], strict=True):
        assert list(item.values) == pytest.approx(mock.embedding(text, 8), abs=1e-6)
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (3, 3)


def test_list_models(stub: pb_grpc.GatewayStub) -> None:
    response, call = stub.ListModels.with_call(pb.ListModelsRequest(), timeout=10)
    ids = [(m.id, m.owned_by) for m in response.models]
    assert ("chat", "default") in ids
    assert ids == sorted(ids)
    assert dict(call.initial_metadata())["x-request-id"].startswith("req_")


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.ChatRequest(model="chat"), "messages"),
        (pb.ChatRequest(messages=[user("hi")]), "model"),
        (
            pb.ChatRequest(model="chat", messages=[pb.ChatMessage(role="user")]),
            "messages[0].content",
        ),
        (
            pb.ChatRequest(model="chat", messages=[pb.ChatMessage(role="x", content="hi")]),
            "messages[0].role",
        ),
        (chat_request(temperature=3.0), "temperature"),
        (chat_request(max_tokens=0), "max_tokens"),
    ],
)
def test_bad_chat_requests_are_invalid_argument_naming_the_field(
    stub: pb_grpc.GatewayStub, request_: pb.ChatRequest, param: str
) -> None:
    for method in (stub.Chat, stub.ChatStream):
        err = rpc_error(method, request_, metadata=(("x-request-id", "bad-req"),))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        meta = trailing(err)
        assert meta["x-kanal-error-param"] == param
        assert meta["x-kanal-error-code"] == "invalid_value"
        assert meta["x-kanal-error-type"] == "invalid_request_error"
        assert meta["x-request-id"] == "bad-req"


def test_extra_cannot_override_typed_or_rpc_fields(stub: pb_grpc.GatewayStub) -> None:
    for key in ("stream", "stream_options", "model", "max_tokens"):
        extra = struct_pb2.Struct()
        extra.update({key: True})
        err = rpc_error(stub.Chat, chat_request(extra=extra))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert trailing(err)["x-kanal-error-param"] == f"extra.{key}"


def test_embed_without_input_is_invalid_argument(stub: pb_grpc.GatewayStub) -> None:
    err = rpc_error(stub.Embed, pb.EmbedRequest(model="chat"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(err)["x-kanal-error-param"] == "input"


def test_unknown_model_is_not_found(stub: pb_grpc.GatewayStub) -> None:
    for method, request_ in (
        (stub.Chat, pb.ChatRequest(model="nope", messages=[user("hi")])),
        (stub.ChatStream, pb.ChatRequest(model="nope", messages=[user("hi")])),
        (stub.Embed, pb.EmbedRequest(model="nope", input=["x"])),
    ):
        err = rpc_error(method, request_)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "`nope` does not exist" in err.details()
        assert trailing(err)["x-kanal-error-code"] == "model_not_found"
        assert trailing(err)["x-kanal-error-param"] == "model"


@pytest.mark.parametrize(
    ("status", "code", "error_code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT, "upstream_rejected_request"),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "upstream_rate_limited"),
        (503, grpc.StatusCode.UNAVAILABLE, "upstream_error"),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED, "upstream_timeout"),
    ],
)
def test_upstream_failures_map_to_grpc_status(
    stub: pb_grpc.GatewayStub, status: int, code: grpc.StatusCode, error_code: str
) -> None:
    request_ = pb.ChatRequest(model=f"fail-{status}", messages=[user("hi")])
    for method in (stub.Chat, stub.ChatStream):
        err = rpc_error(method, request_)
        assert err.code() == code
        meta = trailing(err)
        assert meta["x-kanal-error-code"] == error_code
        assert ("retry-after" in meta) == (status == 429)
        if status == 429:
            assert meta["retry-after"] == "1"


def test_api_keys_are_required_when_the_snapshot_has_some(
    keyed: tuple[pb_grpc.GatewayStub, ThreadedGateway],
) -> None:
    stub, _ = keyed
    for metadata, error_code in (
        ((), "missing_api_key"),
        ((("authorization", "Bearer sk-wrong"),), "invalid_api_key"),
        ((("authorization", API_KEY),), "missing_api_key"),  # no Bearer scheme
    ):
        for method, request_ in (
            (stub.Chat, chat_request()),
            (stub.ChatStream, chat_request()),
            (stub.Embed, pb.EmbedRequest(model="chat", input=["x"])),
            (stub.ListModels, pb.ListModelsRequest()),
        ):
            err = rpc_error(method, request_, metadata=metadata)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
            assert trailing(err)["x-kanal-error-code"] == error_code
    good = (("authorization", f"Bearer {API_KEY}"),)
    assert (
        stub.Chat(chat_request("with a key"), metadata=good, timeout=10).choices[0].message.content
    )
    assert list(stub.ChatStream(chat_request(), metadata=good, timeout=10))
    assert stub.Embed(pb.EmbedRequest(model="chat", input=["x"]), metadata=good, timeout=10)
    models = stub.ListModels(pb.ListModelsRequest(), metadata=good, timeout=10).models
    assert [(m.id, m.owned_by) for m in models] == [("chat", "default")]


# -- the same answers as HTTP -----------------------------------------------------------------


def test_grpc_and_http_give_the_same_answer(
    open_gw: tuple[pb_grpc.GatewayStub, ThreadedGateway],
) -> None:
    stub, gw = open_gw
    text = "same answer on both protocols"
    body = {"model": "chat", "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    status, answer = http(gw, "/chat/completions", body)
    assert status == 200
    response = stub.Chat(chat_request(text, max_tokens=5), timeout=10)
    assert response.choices[0].message.content == answer["choices"][0]["message"]["content"]
    assert response.choices[0].finish_reason == answer["choices"][0]["finish_reason"] == "length"
    assert response.id == answer["id"]
    assert response.model == answer["model"]
    assert response.usage.prompt_tokens == answer["usage"]["prompt_tokens"]
    assert response.usage.completion_tokens == answer["usage"]["completion_tokens"]

    status, events = http(
        gw, "/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert status == 200
    chunks = list(stub.ChatStream(chat_request(text, max_tokens=5, include_usage=True), timeout=10))
    assert len(chunks) == len(events)
    for chunk, event in zip(chunks, events, strict=True):
        assert [c.delta.content for c in chunk.choices] == [
            c["delta"].get("content") or "" for c in event["choices"]
        ]
        assert [c.finish_reason for c in chunk.choices] == [
            c["finish_reason"] or "" for c in event["choices"]
        ]
    assert chunks[-1].usage.total_tokens == events[-1]["usage"]["total_tokens"]

    status, answer = http(gw, "/embeddings", {"model": "chat", "input": ["x y"], "dimensions": 4})
    assert status == 200
    vector = stub.Embed(pb.EmbedRequest(model="chat", input=["x y"], dimensions=4), timeout=10)
    assert list(vector.embeddings[0].values) == pytest.approx(answer["data"][0]["embedding"])

    status, listing = http(gw, "/models")
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert [(m.id, m.owned_by) for m in models] == [
        (e["id"], e["owned_by"]) for e in listing["data"]
    ]


def test_grpc_and_http_give_the_same_errors(
    open_gw: tuple[pb_grpc.GatewayStub, ThreadedGateway],
    keyed: tuple[pb_grpc.GatewayStub, ThreadedGateway],
) -> None:
    stub, gw = open_gw
    cases = [
        ({"model": "chat", "messages": []}, pb.ChatRequest(model="chat"), "INVALID_ARGUMENT"),
        (
            {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
            pb.ChatRequest(model="nope", messages=[user("hi")]),
            "NOT_FOUND",
        ),
        (
            {"model": "fail-429", "messages": [{"role": "user", "content": "hi"}]},
            pb.ChatRequest(model="fail-429", messages=[user("hi")]),
            "RESOURCE_EXHAUSTED",
        ),
    ]
    for body, request_, code in cases:
        status, answer = http(gw, "/chat/completions", body)
        err = rpc_error(stub.Chat, request_)
        assert err.code() == status_code(status) == getattr(grpc.StatusCode, code)
        assert err.details() == answer["error"]["message"]
        meta = trailing(err)
        assert meta.get("x-kanal-error-code") == answer["error"]["code"]
        assert meta.get("x-kanal-error-param") == answer["error"]["param"]
        assert meta["x-kanal-error-type"] == answer["error"]["type"]

    keyed_stub, keyed_gw = keyed
    status, answer = http(keyed_gw, "/models", key="sk-wrong")
    err = rpc_error(
        keyed_stub.ListModels,
        pb.ListModelsRequest(),
        metadata=(("authorization", "Bearer sk-wrong"),),
    )
    assert status == 401 and err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == answer["error"]["message"]


# -- stream edge cases, against a stand-in core (a real grpc server and client) ---------------


def _chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


class FakeCore:
    """Stands in for ``kanal.gateway.service.Gateway``: just what the gRPC service calls."""

    def __init__(self, stream: AsyncIterator[dict[str, Any]] | None = None) -> None:
        self.runtime = SimpleNamespace(settings=GatewaySettings())
        self.telemetry = Telemetry()
        self.stream = stream

    async def authenticate(self, authorization: str | None) -> Caller:
        return Caller("default")

    def prepare(self, op: Any, caller: Caller, body: dict[str, Any], **_: Any) -> Any:
        route = SimpleNamespace(model=body["model"], namespace="default")
        return SimpleNamespace(route=route, headers={}, body=body)

    async def open_stream(self, call: Any, trace: Any) -> Any:
        trace.backend = "default/fake"
        return self.stream

    async def call(self, call: Any, trace: Any) -> dict[str, Any]:
        raise RuntimeError("database password is hunter2")


def with_fake_core(core: FakeCore, check: Any) -> None:
    async def main() -> None:
        server, port = await start_grpc(core, "127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await check(pb_grpc.GatewayStub(channel))
        finally:
            await server.stop(grace=None)

    asyncio.run(main())


def test_a_mid_stream_failure_ends_the_stream_after_the_chunks_sent() -> None:
    async def upstream() -> AsyncIterator[dict[str, Any]]:
        yield _chunk("one")
        yield _chunk(" two")
        raise UpstreamError(FailureKind.SERVER, "connection reset by peer")

    async def check(stub: pb_grpc.GatewayStub) -> None:
        call = stub.ChatStream(chat_request(), metadata=(("x-request-id", "mid-1"),))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for chunk in call:
                received.append(chunk.choices[0].delta.content)
        assert received == ["one", " two"]
        assert dict(await call.initial_metadata())["x-kanal-backend"] == "default/fake"
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "upstream failed for model chat: connection reset by peer"
        meta = dict(err.trailing_metadata())
        assert meta["x-kanal-error-code"] == "upstream_error"
        assert meta["x-request-id"] == "mid-1"

    with_fake_core(FakeCore(upstream()), check)


def test_cancelling_a_stream_closes_the_upstream() -> None:
    closed = asyncio.Event()

    async def upstream() -> AsyncIterator[dict[str, Any]]:
        try:
            yield _chunk("first")
            await asyncio.Event().wait()  # an upstream that goes quiet
            yield _chunk("never")
        finally:
            closed.set()

    async def check(stub: pb_grpc.GatewayStub) -> None:
        call = stub.ChatStream(chat_request())
        first = await call.read()
        assert first.choices[0].delta.content == "first"
        call.cancel()
        await asyncio.wait_for(closed.wait(), 5)
        assert call.cancelled()

    with_fake_core(FakeCore(upstream()), check)


def test_unexpected_errors_are_internal_without_details_leaking() -> None:
    async def check(stub: pb_grpc.GatewayStub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Chat(chat_request(), metadata=(("x-request-id", "oops-1"),))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "hunter2" not in (info.value.details() or "")
        meta = dict(info.value.trailing_metadata())
        assert meta["x-kanal-error-code"] == "internal_error"
        assert meta["x-request-id"] == "oops-1"

    with_fake_core(FakeCore(), check)


# -- pure translation -------------------------------------------------------------------------


def test_status_code_table() -> None:
    expected = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        413: "INVALID_ARGUMENT",
        422: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        502: "UNAVAILABLE",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
        418: "INTERNAL",
    }
    assert {s: status_code(s).name for s in expected} == expected


def test_chat_body_is_the_openai_body() -> None:
    extra = struct_pb2.Struct()
    extra.update(
        {
            "seed": 42,
            "presence_penalty": 0.5,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "metadata": None,
        }
    )
    request = pb.ChatRequest(
        model="chat",
        messages=[pb.ChatMessage(role="system", content=""), user("hi")],
        top_p=0.25,
        stop=["\n"],
        user="u-1",
        include_usage=True,
        extra=extra,
    )
    assert chat_body(request, stream=True) == {
        "seed": 42,
        "presence_penalty": 0.5,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "metadata": None,
        "model": "chat",
        "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
        "top_p": 0.25,
        "stop": ["\n"],
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    plain = chat_body(
        pb.ChatRequest(model="m", messages=[user("x")], include_usage=True), stream=False
    )
    assert plain == {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert isinstance(chat_body(request, stream=False)["seed"], int)
