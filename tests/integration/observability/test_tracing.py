"""Traces: the span tree and GenAI attributes of real requests through a real gateway to fake
upstreams (in-memory span exporter), retries and fallbacks as separate attempt spans, streams,
and the W3C trace context from callers (HTTP headers, gRPC metadata) on to the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import grpc
import orjson
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from fakes import FakeOpenAI, Fault
from fakes._base import DEFAULT_PROMPT_TOKENS
from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from kanal.gateway.server import RunningGateway
from kanal.gateway.telemetry._tracing import TracingSink
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
FAKE_COMPLETION_TOKENS = 5  # "Hello from the fake upstream." (one token per word)


def backend(name: str, url: str) -> str:
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: {name}}}
spec:
  provider: openai-compatible
  endpoint: {url}
  models: [{{name: m-{name}, contextWindow: 8192}}]
"""


def route(targets: list[tuple[str, int]], extra: str = "") -> str:
    """targets: (backend name, priority)."""
    entries = "\n".join(
        f"    - {{backendRef: {{name: {n}}}, model: m-{n}, priority: {p}}}" for n, p in targets
    )
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat}}
spec:
  backends:
{entries}
  retry: {{attempts: 1, backoff: 1ms}}
{extra}
"""


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hello"}], **extra}


@dataclass
class Traced:
    running: RunningGateway
    exporter: InMemorySpanExporter
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"

    async def post(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.post(
            f"{self.base}/v1/chat/completions", json=body, headers=headers or {}
        ) as r:
            if body.get("stream") and r.status == 200:
                return r.status, [line async for line in r.content if line.strip()]
            return r.status, await r.json()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def request_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.SERVER]


@asynccontextmanager
async def traced_gateway(yaml_text: str) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = replace(TEST_SETTINGS, tracer_provider=provider)
    async with (
        gateway_with(snapshot_from_yaml(yaml_text), settings) as running,
        aiohttp.ClientSession() as http,
    ):
        yield Traced(running, exporter, http)


def run(check: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(check(), 60)

    asyncio.run(bounded())


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    parent_id = parent.context.span_id
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent_id]
    return sorted(found, key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def traceparent_ids(header: str | None) -> tuple[str, str]:
    assert header is not None, "the upstream got no traceparent"
    version, trace_id, span_id, _flags = header.split("-")
    assert version == "00"
    return trace_id, span_id


# -- the span tree -------------------------------------------------------------------------


def test_request_span_tree_attributes_and_upstream_traceparent() -> None:
    async def check() -> None:
        async with FakeOpenAI() as a:
            text = backend("a", a.url) + route(
                [("a", 0)],
                "  cache: {enabled: true, ttl: 1h}\n"
                "  rateLimit: {requestsPerMinute: 100, per: key}\n"
                "  context: {enabled: true, maxTokens: 2000}\n",
            )
            async with traced_gateway(text) as gw:
                status, _ = await gw.post(
                    chat(max_tokens=50, temperature=0.25), {"x-session-id": "s1"}
                )
                assert status == 200
                spans = gw.spans()
                (request,) = gw.request_spans()
                assert request.parent is None  # no caller context: a new trace
                assert request.name == "chat chat"
                a_ = attrs(request)
                assert a_["gen_ai.operation.name"] == "chat"
                assert a_["gen_ai.request.model"] == "chat"
                assert a_["gen_ai.response.model"] == "m-a"
                assert a_["gen_ai.system"] == a_["gen_ai.provider.name"] == "openai-compatible"
                assert a_["gen_ai.usage.input_tokens"] == DEFAULT_PROMPT_TOKENS
                assert a_["gen_ai.usage.output_tokens"] == FAKE_COMPLETION_TOKENS
                assert a_["gen_ai.request.max_tokens"] == 50
                assert a_["gen_ai.request.temperature"] == 0.25
                assert a_["kanal.route"] == "default/chat"
                assert a_["kanal.backend"] == "default/a"
                assert a_["kanal.namespace"] == "default"
                assert a_["kanal.cache_hit"] is False
                assert a_["kanal.attempts"] == 1
                assert a_["http.response.status_code"] == 200
                assert request.status.status_code is not StatusCode.ERROR

                tree = [
                    (s.name, attrs(s).get("kanal.policy.phase")) for s in children(spans, request)
                ]
                assert tree == [
                    ("kanal.policy.context", "before"),
                    ("kanal.policy.cache", "before"),
                    ("kanal.policy.limits", "before"),
                    ("kanal.routing", None),
                    ("kanal.policy.limits", "after"),
                    ("kanal.policy.cache", "after"),
                    ("kanal.policy.context", "after"),
                ], tree
                routing = next(s for s in spans if s.name == "kanal.routing")
                (attempt,) = children(spans, routing)
                assert attempt.kind is SpanKind.CLIENT
                assert attempt.name == "chat m-a"
                at = attrs(attempt)
                assert at["kanal.backend"] == "default/a"
                assert at["gen_ai.request.model"] == "m-a"
                assert at["kanal.attempt"] == 1 and at["kanal.tier"] == 0
                assert at["kanal.attempt.outcome"] == "ok"
                assert {s.context.trace_id for s in spans} == {request.context.trace_id}

                # the upstream request carries the attempt span as its parent
                trace_id, parent_id = traceparent_ids(a.requests[0].header("traceparent"))
                assert trace_id == format(request.context.trace_id, "032x")
                assert parent_id == format(attempt.context.span_id, "016x")

                # the same request again: the cache answers, no routing
                gw.exporter.clear()
                assert (await gw.post(chat(max_tokens=50, temperature=0.25)))[0] == 200
                spans = gw.spans()
                (request,) = gw.request_spans()
                assert attrs(request)["kanal.cache_hit"] is True
                assert not [s for s in spans if s.name == "kanal.routing"]
                lookup = next(s for s in spans if s.name == "kanal.policy.cache")
                assert attrs(lookup)["kanal.policy.answered"] is True
                assert len(a.requests) == 1

    run(check)


def test_retry_on_the_same_tier_is_a_second_attempt_span() -> None:
    async def check() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.status(500))
            text = backend("a", a.url) + backend("b", b.url) + route([("a", 0), ("b", 1)])
            async with traced_gateway(text) as gw:
                assert (await gw.post(chat()))[0] == 200
                spans = gw.spans()
                routing = next(s for s in spans if s.name == "kanal.routing")
                first, second = children(spans, routing)
                assert [attrs(s)["kanal.backend"] for s in (first, second)] == ["default/a"] * 2
                assert attrs(first)["kanal.attempt.outcome"] == "5xx"
                assert first.status.status_code is StatusCode.ERROR
                assert attrs(first)["error.type"] == "5xx"
                assert attrs(first)["kanal.retry"] is False
                assert attrs(second)["kanal.attempt.outcome"] == "ok"
                assert attrs(second)["kanal.retry"] is True
                assert attrs(second)["kanal.attempt"] == 2
                assert attrs(second)["kanal.fallback"] is False
                assert attrs(routing)["kanal.attempts"] == 2
                (request,) = gw.request_spans()
                assert attrs(request)["kanal.attempts"] == 2
                assert attrs(request)["kanal.backend"] == "default/a"
                # each attempt went upstream with its own span as the parent
                sent = [traceparent_ids(r.header("traceparent"))[1] for r in a.requests]
                assert sent == [format(s.context.span_id, "016x") for s in (first, second)]
                assert not b.requests

    run(check)


def test_fallback_to_the_next_tier_is_visible() -> None:
    async def check() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.status(500), Fault.status(503))
            text = backend("a", a.url) + backend("b", b.url) + route([("a", 0), ("b", 1)])
            async with traced_gateway(text) as gw:
                assert (await gw.post(chat()))[0] == 200
                spans = gw.spans()
                routing = next(s for s in spans if s.name == "kanal.routing")
                attempts = children(spans, routing)
                got = [
                    (
                        attrs(s)["kanal.backend"],
                        attrs(s)["kanal.tier"],
                        attrs(s)["kanal.fallback"],
                        attrs(s)["kanal.attempt.outcome"],
                    )
                    for s in attempts
                ]
                assert got == [
                    ("default/a", 0, False, "5xx"),
                    ("default/a", 0, False, "5xx"),
                    ("default/b", 1, True, "ok"),
                ], got
                assert attempts[2].name == "chat m-b"
                (request,) = gw.request_spans()
                assert attrs(request)["kanal.backend"] == "default/b"
                assert attrs(request)["gen_ai.response.model"] == "m-b"
                assert attrs(request)["kanal.attempts"] == 3

    run(check)


def test_failed_request_span_has_error_status_and_no_caller_model_in_its_name() -> None:
    async def check() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.status(500), Fault.status(500))
            async with traced_gateway(backend("a", a.url) + route([("a", 0)])) as gw:
                status, _ = await gw.post(chat())
                assert status == 502
                (request,) = gw.request_spans()
                assert request.status.status_code is StatusCode.ERROR
                assert attrs(request)["error.type"] == "upstream_error"
                assert attrs(request)["http.response.status_code"] == 502

                gw.exporter.clear()
                status, _ = await gw.post({**chat(), "model": "no-such-model-x1"})
                assert status == 404
                (request,) = gw.request_spans()
                assert request.name == "chat"
                assert attrs(request)["error.type"] == "model_not_found"
                assert "no-such-model-x1" not in str(attrs(request))

    run(check)


def test_stream_span_has_time_to_first_token_and_usage() -> None:
    async def check() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.ok(event_delay=0.01))
            async with traced_gateway(backend("a", a.url) + route([("a", 0)])) as gw:
                status, lines = await gw.post(
                    chat(stream=True, stream_options={"include_usage": True})
                )
                assert status == 200 and lines[-1].strip() == b"data: [DONE]"
                (request,) = gw.request_spans()
                at = attrs(request)
                assert at["kanal.stream"] is True
                assert at["gen_ai.usage.input_tokens"] == DEFAULT_PROMPT_TOKENS
                assert at["gen_ai.usage.output_tokens"] == FAKE_COMPLETION_TOKENS
                assert at["kanal.usage_source"] == "provider"
                ttft = at["kanal.time_to_first_token"]
                duration = ((request.end_time or 0) - (request.start_time or 0)) / 1e9
                assert 0 < ttft < duration  # the rest of the stream came after the first chunk
                (event,) = [e for e in request.events if e.name == "gen_ai.first_chunk"]
                assert (request.start_time or 0) < event.timestamp < (request.end_time or 0)
                # the attempt span ends at the first chunk, the request span at the last
                (attempt,) = [s for s in gw.spans() if s.kind is SpanKind.CLIENT]
                assert (attempt.end_time or 0) < (request.end_time or 0)

    run(check)


# -- W3C trace context from the caller -----------------------------------------------------


def test_caller_traceparent_over_http_continues_the_trace_upstream() -> None:
    async def check() -> None:
        async with (
            FakeOpenAI() as a,
            traced_gateway(backend("a", a.url) + route([("a", 0)])) as gw,
        ):
            headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
            assert (await gw.post(chat(), headers))[0] == 200
            (request,) = gw.request_spans()
            assert format(request.context.trace_id, "032x") == CALLER_TRACE
            assert request.parent is not None and request.parent.is_remote
            assert format(request.parent.span_id, "016x") == CALLER_SPAN
            trace_id, _ = traceparent_ids(a.requests[0].header("traceparent"))
            assert trace_id == CALLER_TRACE
            assert a.requests[0].header("tracestate") == "vendor=1"

    run(check)


def test_caller_traceparent_over_grpc_metadata_continues_the_trace_upstream() -> None:
    async def check() -> None:
        async with (
            FakeOpenAI() as a,
            traced_gateway(backend("a", a.url) + route([("a", 0)])) as gw,
        ):
            target = f"127.0.0.1:{gw.running.grpc_port}"
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.GatewayStub(channel)
                request = pb.ChatRequest(
                    model="chat", messages=[pb.ChatMessage(role="user", content="hi")]
                )
                answer = await stub.Chat(
                    request, metadata=(("traceparent", TRACEPARENT),), timeout=10
                )
                assert answer.choices[0].message.content
                chunks = stub.ChatStream(
                    request, metadata=(("traceparent", TRACEPARENT),), timeout=10
                )
                assert [c async for c in chunks]
            unary, stream = sorted(gw.request_spans(), key=lambda s: s.start_time or 0)
            for span in (unary, stream):
                assert format(span.context.trace_id, "032x") == CALLER_TRACE
                assert span.parent is not None
                assert format(span.parent.span_id, "016x") == CALLER_SPAN
                assert attrs(span)["rpc.system"] == "grpc"
                assert attrs(span)["kanal.protocol"] == "grpc"
                assert attrs(span)["kanal.route"] == "default/chat"
            assert attrs(stream)["kanal.stream"] is True
            for sent in a.requests:
                assert traceparent_ids(sent.header("traceparent"))[0] == CALLER_TRACE

    run(check)


# -- off -----------------------------------------------------------------------------------


def test_tracing_off_builds_no_tracer_and_sends_no_traceparent() -> None:
    async def check() -> None:
        async with FakeOpenAI() as a:
            snapshot = snapshot_from_yaml(backend("a", a.url) + route([("a", 0)]))
            async with (
                gateway_with(snapshot, TEST_SETTINGS) as running,
                aiohttp.ClientSession() as http,
            ):
                gateway = running.gateway
                assert gateway.runtime.tracer is None
                assert not [s for s in gateway.telemetry.sinks if isinstance(s, TracingSink)]
                session = gateway.runtime.backends["default/a"].upstream.session
                assert not session.trace_configs
                async with http.post(
                    f"http://127.0.0.1:{running.http_port}/v1/chat/completions",
                    data=orjson.dumps(chat()),
                    headers={"traceparent": TRACEPARENT, "content-type": "application/json"},
                ) as r:
                    assert r.status == 200
                assert a.requests[0].header("traceparent") is None

    run(check)


def test_sampled_out_request_makes_no_spans_but_passes_the_decision_upstream() -> None:
    async def check() -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        async with FakeOpenAI() as a:
            snapshot = snapshot_from_yaml(backend("a", a.url) + route([("a", 0)]))
            settings = replace(TEST_SETTINGS, tracer_provider=provider)
            async with (
                gateway_with(snapshot, settings) as running,
                aiohttp.ClientSession() as http,
            ):
                not_sampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
                async with http.post(
                    f"http://127.0.0.1:{running.http_port}/v1/chat/completions",
                    json=chat(),
                    headers={"traceparent": not_sampled},
                ) as r:
                    assert r.status == 200
            assert not exporter.get_finished_spans()
            sent = a.requests[0].header("traceparent")
            assert sent is not None
            assert sent.startswith(f"00-{CALLER_TRACE}-") and sent.endswith("-00")

    run(check)
