"""Metrics: ``/metrics`` of a real gateway after a known mix of requests, parsed with
prometheus_client's parser; bounded labels only; backend health; the OTel mirror."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from kanal.gateway.errors import GatewayError
from kanal.gateway.runtime import Runtime
from kanal.gateway.telemetry import RequestRecord
from kanal.gateway.telemetry._metrics import MetricsSink
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

API_KEY = "sk-kanal-metrics-test-5f3a9c0d2e"
KEY_NAME = "metrics-caller-key"
REQUEST_ID = "req-metrics-7d1e4b"
UNKNOWN_MODEL = "caller-invented-model-93b1"
SESSION_ID = "sess-metrics-42"
PROMPT = "zebraprompt91"
SETTINGS = replace(TEST_SETTINGS, cooldown_after_failures=2, cooldown_seconds=60)

YAML = f"""
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: mock}}
spec:
  provider: mock
  models:
    - {{name: mock-small, contextWindow: 8192, pricing: {{inputPerMTok: 1, outputPerMTok: 2}}}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: flaky}}
spec:
  provider: mock
  models: [{{name: error-503, contextWindow: 8192}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: limited}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  rateLimit: {{requestsPerMinute: 1, per: key}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: cached}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  cache: {{enabled: true, ttl: 1h}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: remembered}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  context: {{enabled: true, maxTokens: 2000}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: flaky}}
spec:
  backends: [{{backendRef: {{name: flaky}}, model: error-503}}]
  retry: {{attempts: 0}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {KEY_NAME}, labels: {{kanal.dev/api-key: "true"}}}}
data: {{key: {base64.b64encode(API_KEY.encode()).decode()}}}
"""

HEADERS = {"Authorization": f"Bearer {API_KEY}", "x-request-id": REQUEST_ID}


def body(model: str, text: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def run(check: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(check(), 60)

    asyncio.run(bounded())


def test_metrics_after_a_known_mix_of_requests() -> None:
    async def check() -> None:
        snapshot = snapshot_from_yaml(YAML)
        async with (
            gateway_with(snapshot, SETTINGS) as running,
            aiohttp.ClientSession() as http,
        ):
            base = f"http://127.0.0.1:{running.http_port}"

            async def post(payload: dict[str, Any], **headers: str) -> int:
                async with http.post(
                    f"{base}/v1/chat/completions", json=payload, headers={**HEADERS, **headers}
                ) as r:
                    await r.read()
                    return r.status

            async def scrape() -> tuple[str, list[Sample]]:
                async with http.get(f"{base}/metrics") as r:  # no credentials needed
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/plain")
                    text = await r.text()
                return text, parse(text)

            _, before = await scrape()
            assert value(before, "kanal_backend_cooldown", backend="default/flaky") == 0

            assert await post(body("chat")) == 200  # ok
            assert await post(body("chat", stream=True)) == 200  # stream
            assert await post(body(UNKNOWN_MODEL)) == 404
            assert await post(body("limited")) == 200
            assert await post(body("limited")) == 429  # rate_limit_exceeded
            assert await post(body("cached")) == 200  # miss
            assert await post(body("cached")) == 200  # hit
            assert await post(body("remembered"), **{"x-session-id": SESSION_ID}) == 200
            assert await post(body("remembered"), **{"x-session-id": SESSION_ID}) == 200
            assert await post(body("flaky")) == 502
            assert await post(body("flaky")) == 502  # second failure: cooldown
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
                answer = await pb_grpc.GatewayStub(channel).Chat(
                    pb.ChatRequest(
                        model="chat", messages=[pb.ChatMessage(role="user", content=PROMPT)]
                    ),
                    metadata=(("authorization", f"Bearer {API_KEY}"),),
                    timeout=10,
                )
                assert answer.choices

            text, samples = await scrape()
            chat = {"route": "default/chat", "namespace": "default"}

            # requests and latency
            requests = "kanal_requests_total"
            assert value(samples, requests) == 12
            assert value(samples, requests, protocol="http", **chat, status_class="2xx") == 2
            assert value(samples, requests, protocol="grpc", **chat, outcome="ok") == 1
            assert value(samples, requests, route="", status_class="4xx") == 1  # the 404
            assert value(samples, requests, route="default/limited", status_class="2xx") == 1
            assert value(samples, requests, status_class="5xx", route="default/flaky") == 2
            duration = "gen_ai_server_request_duration_seconds_count"
            assert value(samples, duration) == 12
            assert value(samples, duration, **chat, backend="default/mock") == 3
            ttft = "gen_ai_server_time_to_first_token_seconds_count"
            assert value(samples, ttft, **chat, stream="true") == 1
            assert value(samples, ttft, **chat, stream="false") == 2
            assert value(samples, ttft, route="default/flaky") == 0  # failures have none

            # tokens and cost: the mock reports 1 prompt and 5 completion tokens for PROMPT
            tokens = "gen_ai_client_token_usage_sum"
            assert value(samples, tokens, **chat, token_type="input") == 3
            assert value(samples, tokens, **chat, token_type="output") == 15
            # upstream answers: chat x3, limited, cached (miss only), remembered x2
            assert value(samples, "gen_ai_client_token_usage_count", token_type="output") == 7
            cost = value(samples, "kanal_cost_usd_total", **chat, backend="default/mock")
            assert abs(cost - 3 * (1 * 1e-6 + 5 * 2e-6)) < 1e-12

            # errors by class and code; limit rejections; cache
            errors = "kanal_errors_total"
            assert value(samples, errors, error_code="model_not_found", status_class="4xx") == 1
            assert value(samples, errors, error_code="rate_limit_exceeded") == 1
            assert value(samples, errors, error_code="upstream_error") == 2
            assert value(samples, errors) == 4
            rejections = "kanal_limit_rejections_total"
            assert value(samples, rejections, route="default/limited") == 1
            assert value(samples, rejections, error_code="rate_limit_exceeded") == 1
            assert value(samples, rejections) == 1
            lookups = "kanal_cache_lookups_total"
            assert value(samples, lookups, route="default/cached", result="hit") == 1
            assert value(samples, lookups, route="default/cached", result="miss") == 1

            # upstream attempts and health: the flaky backend failed twice and cools down
            attempts = "kanal_upstream_attempts_total"
            assert value(samples, attempts, backend="default/flaky", outcome="5xx") == 2
            assert value(samples, attempts, backend="default/mock", outcome="ok") == 7
            upstream = "gen_ai_client_operation_duration_seconds_count"
            assert value(samples, upstream, backend="default/flaky", outcome="5xx") == 2
            assert value(samples, "kanal_backend_cooldown", backend="default/flaky") == 1
            assert value(samples, "kanal_backend_cooldown", backend="default/mock") == 0
            assert value(samples, "kanal_backend_cooldowns_total", backend="default/flaky") == 1
            assert (
                value(samples, "kanal_backend_consecutive_failures", backend="default/flaky")
                == 0  # reset when the cooldown started
            )

            # context: the second turn of the session loaded the first turn's 2 messages
            remembered = {"route": "default/remembered"}
            assert value(samples, "kanal_context_loaded_messages_count", **remembered) == 2
            assert value(samples, "kanal_context_loaded_messages_sum", **remembered) == 2
            assert value(samples, "kanal_context_prompt_tokens_count", **remembered) == 2

            # overhead: requests that went upstream
            assert value(samples, "kanal_gateway_overhead_seconds_count") == 9

            # bounded labels: nothing the caller sent or that identifies a key is a label
            label_values = {v for s in samples for v in s.labels.values()}
            for secret in (API_KEY, KEY_NAME, REQUEST_ID, UNKNOWN_MODEL, SESSION_ID, PROMPT):
                assert not [v for v in label_values if secret in v], secret
                assert secret not in text
            assert not [v for v in label_values if v.startswith("key:")]
            allowed = {
                "protocol",
                "operation",
                "route",
                "namespace",
                "backend",
                "status_class",
                "outcome",
                "stream",
                "error_code",
                "result",
                "token_type",
                "usage_source",
                "le",
            }
            names = {k for s in samples for k in s.labels}
            assert names <= allowed, names - allowed

    run(check)


def test_cooldown_gauge_flips_after_failures_and_back_when_it_ends() -> None:
    async def check() -> None:
        settings = replace(SETTINGS, cooldown_seconds=0.3)
        async with (
            gateway_with(snapshot_from_yaml(YAML), settings) as running,
            aiohttp.ClientSession() as http,
        ):
            base = f"http://127.0.0.1:{running.http_port}"

            async def cooling() -> float:
                async with http.get(f"{base}/metrics") as r:
                    samples = parse(await r.text())
                return value(samples, "kanal_backend_cooldown", backend="default/flaky")

            async def fail() -> None:
                async with http.post(
                    f"{base}/v1/chat/completions", json=body("flaky"), headers=HEADERS
                ) as r:
                    assert r.status == 502

            await fail()
            assert await cooling() == 0  # one failure: not yet
            await fail()
            assert await cooling() == 1
            await asyncio.sleep(0.4)
            assert await cooling() == 0

    run(check)


def test_metrics_are_mirrored_on_opentelemetry_instruments() -> None:
    """OTEL_METRICS_EXPORTER=otlp records the same measurements on a MeterProvider (here
    with an in-memory reader instead of the OTLP one)."""

    async def check() -> None:
        runtime = Runtime(TEST_SETTINGS)
        await runtime.apply(snapshot_from_yaml(YAML))
        reader = InMemoryMetricReader()
        sink = MetricsSink(runtime, MeterProvider(metric_readers=[reader]))
        record = RequestRecord("http", "chat", "req-x")
        record.error = GatewayError(404, "no such model", code="model_not_found")
        record.ended = record.started + 0.01
        sink.finish(record)
        data = reader.get_metrics_data()
        assert data is not None
        metrics = {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        points = list(metrics["kanal.errors"].data.data_points)
        assert [(p.value, dict(p.attributes or {})) for p in points] == [
            (
                1,
                {
                    "protocol": "http",
                    "operation": "chat",
                    "route": "",
                    "namespace": "",
                    "status_class": "4xx",
                    "error_code": "model_not_found",
                },
            )
        ]
        assert metrics["gen_ai.server.request.duration"].unit == "s"
        cooldown = metrics["kanal.backend.cooldown"].data.data_points
        assert {dict(p.attributes or {})["backend"] for p in cooldown} == {
            "default/mock",
            "default/flaky",
        }
        await sink.close()
        await runtime.close()

    run(check)


def test_metrics_port_of_its_own_keeps_them_from_callers() -> None:
    """With ``metrics_port`` (the chart sets it) callers' port has no /metrics: the page
    names every tenant's routes and traffic."""

    async def check() -> None:
        settings = replace(SETTINGS, metrics_port=0)
        async with (
            gateway_with(snapshot_from_yaml(YAML), settings) as running,
            aiohttp.ClientSession() as http,
        ):
            assert running.metrics_port not in (None, running.http_port)
            callers = f"http://127.0.0.1:{running.http_port}"
            scrapers = f"http://127.0.0.1:{running.metrics_port}"
            async with http.post(
                f"{callers}/v1/chat/completions", json=body("flaky"), headers=HEADERS
            ) as r:
                assert r.status == 502
            async with http.get(f"{callers}/metrics") as r:
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "unknown_url"
            async with http.get(f"{scrapers}/metrics") as r:
                assert r.status == 200
                samples = parse(await r.text())
            assert value(samples, "kanal_requests_total", route="default/flaky") == 1
            async with http.post(f"{scrapers}/v1/chat/completions", json=body("flaky")) as r:
                assert r.status == 404  # the API is not served there

    run(check)
