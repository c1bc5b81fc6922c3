"""The request log: one JSON line per request (HTTP and gRPC) on ``kanal.access``; prompts
and answers only on routes with ``spec.logging.content``, after guardrails redaction;
``kanal up`` writes the lines to stderr as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from harness.procs import Proc, free_ports, wait_until
from kanal.gateway.policy.base import Call, Caller, Outcome, Usage
from kanal.gateway.runtime import Runtime
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.telemetry import RequestRecord
from kanal.gateway.telemetry._accesslog import (
    ACCESS_LOGGER,
    CONTENT_MAX_CHARS,
    AccessLogSink,
    JsonFormatter,
    access_fields,
    configure_logging,
    stop_logging,
)
from kanal.snapshot import RouteConfig, Target, Tier
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

EMAIL = "jane.doe@example.com"
OBJECTS = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: quiet}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  guardrails: {redact: [email]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: verbose}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  guardrails: {redact: [email], block: ["forbidden-word"]}
  logging: {content: true}
---
apiVersion: v1
kind: Secret
metadata: {name: app, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-accesslog-app-key}
"""
KEY = "sk-accesslog-app-key"


async def _exchange(port: int, grpc_port: int) -> dict[str, Any]:
    """The requests of the in-process test; returns their answers by name."""
    base = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    answers: dict[str, Any] = {}

    def body(model: str, text: str, **more: Any) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": text}], **more}

    async with aiohttp.ClientSession() as s:
        async with s.post(
            base,
            json=body("quiet", f"quiet secret plan, mail {EMAIL}"),
            headers={**auth, "x-request-id": "req-quiet", "x-session-id": "my-session-1"},
        ) as r:
            answers["quiet"] = (r.status, await r.json())
        async with s.post(
            base,
            json=body("verbose", f"verbose question for {EMAIL}"),
            headers={**auth, "x-request-id": "req-verbose"},
        ) as r:
            answers["verbose"] = (r.status, await r.json())
        async with s.post(
            base,
            json=body("verbose", "say the forbidden-word please"),
            headers={**auth, "x-request-id": "req-blocked"},
        ) as r:
            answers["blocked"] = (r.status, await r.json())
        async with s.post(
            base,
            json=body("verbose", "stream this", stream=True),
            headers={**auth, "x-request-id": "req-stream"},
        ) as r:
            answers["stream"] = (r.status, await r.text())
        async with s.post(
            base,
            json=body("quiet", "hi"),
            headers={"Authorization": "Bearer sk-not-a-key", "x-request-id": "req-401"},
        ) as r:
            answers["401"] = (r.status, await r.json())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GatewayStub(channel)
        request = pb.ChatRequest(
            model="quiet", messages=[pb.ChatMessage(role="user", content="over grpc")]
        )
        reply = await stub.Chat(
            request, metadata=(("authorization", f"Bearer {KEY}"), ("x-request-id", "req-grpc"))
        )
        answers["grpc"] = reply
    return answers


@pytest.fixture(scope="module")
def logged() -> Iterator[tuple[dict[str, dict[str, Any]], dict[str, Any], str]]:
    """Run the requests once; their log lines by request id, the answers, all log text."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    kanal = logging.getLogger("kanal")
    old_level = kanal.level
    kanal.addHandler(keep)
    kanal.setLevel(logging.DEBUG)
    try:

        async def main() -> dict[str, Any]:
            settings = replace(TEST_SETTINGS, anonymous_tenant=None)
            async with gateway_with(snapshot_from_yaml(OBJECTS), settings) as running:
                return await _exchange(running.http_port, running.grpc_port)

        answers = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        kanal.removeHandler(keep)
        kanal.setLevel(old_level)
    by_id = {}
    for record in records:
        if record.name == ACCESS_LOGGER:
            fields = json.loads(record.getMessage())
            assert fields == record.kanal_access  # type: ignore[attr-defined]
            by_id[fields["request_id"]] = fields
    text = "\n".join(
        logging.Formatter("%(name)s %(levelname)s %(message)s").format(r) for r in records
    )
    yield by_id, answers, text


def test_one_line_per_request(logged: Any) -> None:
    by_id, _, text = logged
    assert set(by_id) == {
        "req-quiet",
        "req-verbose",
        "req-blocked",
        "req-stream",
        "req-401",
        "req-grpc",
    }
    assert text.count('"request_id":"req-quiet"') == 1


def test_fields_of_a_successful_request(logged: Any) -> None:
    by_id, answers, _ = logged
    line = by_id["req-quiet"]
    usage = answers["quiet"][1]["usage"]
    assert line["protocol"] == "http" and line["operation"] == "chat" and not line["stream"]
    assert line["namespace"] == "default" and line["key"] == "key:default/app"
    assert (line["route"], line["backend"], line["model"]) == (
        "default/quiet",
        "default/mock",
        "mock-small",
    )
    assert (line["status"], line["outcome"], line["error_code"]) == (200, "ok", None)
    assert line["attempts"] == 1 and line["usage_source"] == "provider"
    assert (line["input_tokens"], line["output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert line["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6
    )
    assert line["latency_ms"] > 0 and line["ttft_ms"] == line["latency_ms"]
    assert 0 <= line["overhead_ms"] <= line["latency_ms"]
    assert line["cached"] is False
    assert line["time"].endswith("Z") and line["time"][:2] == "20"
    # the session id is correlatable, not printed
    assert line["session"] and len(line["session"]) == 16
    assert "my-session-1" not in json.dumps(line)


def test_no_content_without_the_route_setting(logged: Any) -> None:
    by_id, answers, text = logged
    line = by_id["req-quiet"]
    assert "prompt" not in line and "answer" not in line
    assert "quiet secret plan" not in text
    reply = answers["quiet"][1]["choices"][0]["message"]["content"]
    assert reply not in text
    assert EMAIL not in text


def test_content_when_the_route_enables_it_redacted(logged: Any) -> None:
    by_id, answers, _ = logged
    line = by_id["req-verbose"]
    prompt = json.loads(line["prompt"])
    assert prompt == [{"role": "user", "content": "verbose question for [REDACTED:email]"}]
    assert line["answer"] == answers["verbose"][1]["choices"][0]["message"]["content"]
    assert "[REDACTED:email]" in line["answer"]  # the mock echoes what it was sent
    stream = by_id["req-stream"]
    assert stream["stream"] and stream["outcome"] == "ok" and stream["ttft_ms"] is not None
    assert stream["answer"] == "Mock reply from mock-small: stream this"


def test_input_refused_by_guardrails_is_never_logged(logged: Any) -> None:
    by_id, answers, text = logged
    line = by_id["req-blocked"]
    assert answers["blocked"][0] == 400
    assert (line["status"], line["error_code"]) == (400, "blocked_by_guardrails")
    assert line["prompt"] is None and line["content_omitted"] == "refused by guardrails"
    assert "forbidden-word" not in text


def test_refused_callers_and_grpc(logged: Any) -> None:
    by_id, answers, text = logged
    refused = by_id["req-401"]
    assert answers["401"][0] == 401
    assert (refused["status"], refused["key"], refused["namespace"]) == (401, None, None)
    assert refused["error_code"] and refused["outcome"] == "error"
    assert "sk-not-a-key" not in text and KEY not in text
    via_grpc = by_id["req-grpc"]
    assert via_grpc["protocol"] == "grpc" and via_grpc["status"] == 200
    assert via_grpc["output_tokens"] == answers["grpc"].usage.completion_tokens


def test_the_line_carries_the_request_span_ids() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    access = logging.getLogger(ACCESS_LOGGER)
    keep = Keep()
    access.addHandler(keep)
    saved = access.level
    access.setLevel(logging.INFO)

    async def main() -> None:
        settings = replace(TEST_SETTINGS, anonymous_tenant=None, tracer_provider=provider)
        async with gateway_with(snapshot_from_yaml(OBJECTS), settings) as running:
            url = f"http://127.0.0.1:{running.http_port}/v1/chat/completions"
            body = {"model": "quiet", "messages": [{"role": "user", "content": "x"}]}
            headers = {"Authorization": f"Bearer {KEY}", "x-request-id": "req-traced"}
            async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
                assert r.status == 200

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        access.removeHandler(keep)
        access.setLevel(saved)
    (line,) = [json.loads(r.getMessage()) for r in records]
    (server,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.context is not None
    assert line["trace_id"] == f"{server.context.trace_id:032x}"
    assert line["span_id"] == f"{server.context.span_id:016x}"


# -- offline: trace ids, cut content, the formatter -------------------------------------


def _record(body: dict[str, Any], text: str, log_content: bool = True) -> RequestRecord:
    route = RouteConfig(
        id="default/r",
        namespace="default",
        model="r",
        tiers=(Tier(priority=0, targets=(Target(backend="b", model="m", weight=1),)),),
        tenants=frozenset({"default"}),
        log_content=log_content,
    )
    caller = Caller("default", key="app")
    record = RequestRecord("http", "chat", "req-1")
    record.caller = caller
    record.call = Call(op="chat", caller=caller, route=route, body=body, request_id="req-1")
    record.call.outcome = Outcome(text=text, usage=Usage(3, 4))
    record.ended = record.started + 0.01
    return record


def test_trace_ids_come_from_the_span() -> None:
    record = _record({"messages": []}, "x")
    context = SimpleNamespace(is_valid=True, trace_id=0xABC, span_id=0x12)
    record.span = SimpleNamespace(get_span_context=lambda: context)
    fields = access_fields(record, Runtime(GatewaySettings()))
    assert fields["trace_id"] == f"{0xABC:032x}" and fields["span_id"] == f"{0x12:016x}"
    record.span = None
    assert access_fields(record, Runtime(GatewaySettings()))["trace_id"] is None


def test_long_content_is_cut() -> None:
    record = _record({"messages": "x"}, "y" * (CONTENT_MAX_CHARS + 10))
    fields = access_fields(record, Runtime(GatewaySettings()))
    assert fields["prompt"] == "x"
    assert fields["answer"].endswith("… [10 more characters]")
    assert len(fields["answer"]) < CONTENT_MAX_CHARS + 40


def test_json_formatter_for_other_records() -> None:
    record = logging.LogRecord("kanal.gateway", logging.WARNING, "f.py", 1, "a %s", ("b",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "kanal.gateway"
    assert line["message"] == "a b"


def test_configure_logging_writes_access_lines_as_json_whatever_the_level() -> None:
    out = io.StringIO()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (access.handlers[:], access.level, access.propagate)
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    try:
        configure_logging(logging.WARNING, "text", stream=out)
        logging.getLogger("kanal.gateway").info("not shown at WARNING")
        access.info('{"request_id":"r1"}', extra={"kanal_access": {"request_id": "r1"}})
        stop_logging()
        assert out.getvalue() == '{"request_id":"r1"}\n'
    finally:
        stop_logging()
        access.handlers[:], access.level, access.propagate = saved
        root.handlers[:], root.level = saved_root


def test_configured_request_log_batches_drops_beyond_its_bound_and_says_so() -> None:
    """With the CLI's handler the sink writes lines in order, in batches, off the event loop;
    a stuck stderr costs at most ``max_pending`` lines, and the loss is reported."""
    out = io.StringIO()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (access.handlers[:], access.level, access.propagate)
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    sink = AccessLogSink(Runtime(GatewaySettings()))
    try:
        configure_logging(logging.WARNING, "text", stream=out, max_pending=3)
        for n in range(5):  # faster than the writer's 0.1 s tick: 2 of 5 over the bound
            record = RequestRecord("http", "chat", f"req-{n}")
            record.ended = record.started
            sink.finish(record)
        stop_logging()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line.get("request_id") for line in lines[:3]] == ["req-0", "req-1", "req-2"]
        assert lines[3] == {"logger": ACCESS_LOGGER, "level": "warning", "dropped_lines": 2}
        assert len(lines) == 4
    finally:
        stop_logging()
        access.handlers[:], access.level, access.propagate = saved
        root.handlers[:], root.level = saved_root


# -- kanal up ---------------------------------------------------------------------------


def test_kanal_up_writes_json_lines_to_stderr(tmp_path: Path) -> None:
    (tmp_path / "objects.yaml").write_text(OBJECTS)
    port, grpc_port = free_ports(2)
    log = tmp_path / "up.log"
    argv = [sys.executable, "-m", "kanal", "up", "-f", str(tmp_path), "--port", str(port)]
    argv += ["--grpc-port", str(grpc_port), "--log-format", "json"]
    proc = Proc("kanal up", argv, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(url + "/readyz", timeout=1).status == 200,
            proc,
            "ready",
            30,
        )
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps(
                {"model": "quiet", "messages": [{"role": "user", "content": "hello up"}]}
            ).encode(),
            headers={
                "Authorization": f"Bearer {KEY}",
                "Content-Type": "application/json",
                "x-request-id": "req-up-1",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200

        def logged_line() -> bool:
            return '"request_id":"req-up-1"' in log.read_text()

        wait_until(logged_line, proc, "the request logged", 10)
    finally:
        proc.stop()
    parsed = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (line,) = [p for p in parsed if p.get("request_id") == "req-up-1"]
    assert line["key"] == "key:default/app" and line["status"] == 200
    assert "hello up" not in log.read_text() and KEY not in log.read_text()
    others = [p for p in parsed if "request_id" not in p]
    assert all({"time", "level", "logger", "message"} <= set(p) for p in others)
