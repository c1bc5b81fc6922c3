"""No secret anywhere the gateway writes or answers: a caller API key, a provider key and a
wrong provider key go through a mix of requests (ok, stream, 401 with a wrong key, 404,
upstream 401 and 500, gRPC, a prompt-logging route), then every log record (all loggers
at DEBUG), the request log, the exported spans, /metrics, the usage events, /v1/usage,
/v1/spend, every response body and header, everything in Redis and the snapshot's
printable forms are searched for each secret, plain and base64: none is found.

Also: the prompt of a route without ``spec.logging.content`` appears nowhere; the one of a
route with it appears in its request log line."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import grpc
import pytest
import redis as redis_client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fakes import FakeOpenAI, Fault
from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from kanal.gateway.telemetry._accesslog import ACCESS_LOGGER
from kanal.gateway.usage_api import usage_sink
from kanal.snapshot import Snapshot
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

CALLER_KEY = "sk-caller-NoSecretsTest-7f3a9c51e0"
PROVIDER_KEY = "sk-provider-NoSecretsTest-41d8e2b7aa"
WRONG_PROVIDER_KEY = "sk-stale-provider-NoSecretsTest-9b0c"
WRONG_CALLER_KEY = "sk-guessed-NoSecretsTest-c0ffee1234"
SECRETS = (CALLER_KEY, PROVIDER_KEY, WRONG_PROVIDER_KEY, WRONG_CALLER_KEY)
QUIET_PROMPT = "quiet-prompt-marker-Zq81 please answer"
LOGGED_PROMPT = "logged-prompt-marker-Kw27 please answer"


def objects(url: str) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: provider, namespace: team-a}}
stringData: {{apiKey: {PROVIDER_KEY}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: stale, namespace: team-a}}
data: {{apiKey: {base64.b64encode(WRONG_PROVIDER_KEY.encode()).decode()}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: caller, namespace: team-a, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: {CALLER_KEY}}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: good, namespace: team-a}}
spec:
  provider: openai
  endpoint: {url}
  credentials: {{secretRef: {{name: provider, key: apiKey}}}}
  models:
  - {{name: gpt-4o-mini, contextWindow: 128000, pricing: {{inputPerMTok: 1, outputPerMTok: 2}}}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: stale, namespace: team-a}}
spec:
  provider: openai
  endpoint: {url}
  credentials: {{secretRef: {{name: stale, key: apiKey}}}}
  models: [{{name: gpt-4o-mini, contextWindow: 128000}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: quiet, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: good}}, model: gpt-4o-mini}}]
  retry: {{attempts: 0}}
  budget: {{usdPerDay: 10}}
  cache: {{ttl: 1m}}
  context: {{maxTokens: 1000}}
  rateLimit: {{requestsPerMinute: 1000}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: logged, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: good}}, model: gpt-4o-mini}}]
  retry: {{attempts: 0}}
  logging: {{content: true}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: stale, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: stale}}, model: gpt-4o-mini}}]
  retry: {{attempts: 0}}
"""


@dataclass
class Seen:
    """Everything collected from one run, as text."""

    answers: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    access: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: str = ""
    spans: str = ""
    metrics: str = ""
    usage_events: str = ""
    redis_dump: str = ""
    snapshot_forms: str = ""

    def everything(self) -> dict[str, str]:
        return {
            "responses": "\n".join(self.answers),
            "logs": self.logs,
            "spans": self.spans,
            "metrics": self.metrics,
            "usage events": self.usage_events,
            "redis": self.redis_dump,
            "snapshot": self.snapshot_forms,
        }


def _dump_redis(url: str) -> str:
    conn = redis_client.Redis.from_url(url)
    out: list[str] = []
    try:
        for key in conn.scan_iter(count=1000):
            kind = conn.type(key).decode()
            value: Any
            if kind == "string":
                value = conn.get(key)
            elif kind == "hash":
                value = conn.hgetall(key)
            elif kind == "list":
                value = conn.lrange(key, 0, -1)
            elif kind == "set":
                value = conn.smembers(key)
            elif kind == "zset":
                value = conn.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = conn.xrange(key)
            else:
                value = kind
            out.append(f"{key!r} {kind} {value!r}")
    finally:
        conn.close()
    return "\n".join(out)


async def _requests(base: str, grpc_target: str, fake: FakeOpenAI, seen: Seen) -> None:
    chat = f"{base}/v1/chat/completions"
    good = {"Authorization": f"Bearer {CALLER_KEY}"}

    def body(model: str, text: str = "hello", **more: Any) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": text}], **more}

    async with aiohttp.ClientSession() as s:

        async def call(
            name: str, method: str, url: str, headers: dict[str, str], **kw: Any
        ) -> None:
            async with s.request(method, url, headers={**headers, "x-request-id": name}, **kw) as r:
                text = await r.text()
                seen.statuses[name] = r.status
                seen.answers.append(f"{name} {r.status} {dict(r.headers)!r} {text}")

        session = {**good, "x-session-id": "conversation-1"}
        await call("ok", "POST", chat, session, json=body("quiet", QUIET_PROMPT))
        await call("cached", "POST", chat, good, json=body("quiet", QUIET_PROMPT))
        await call("logged", "POST", chat, good, json=body("logged", LOGGED_PROMPT))
        await call("stream", "POST", chat, good, json=body("quiet", "streaming", stream=True))
        wrong = {"Authorization": f"Bearer {WRONG_CALLER_KEY}"}
        await call("wrong-key", "POST", chat, wrong, json=body("quiet"))
        raw = {"Authorization": CALLER_KEY}  # no "Bearer ": still refused, never echoed
        await call("no-bearer", "POST", chat, raw, json=body("quiet"))
        await call("unknown-model", "POST", chat, good, json=body("no-such-model"))
        await call("upstream-401", "POST", chat, good, json=body("stale"))
        fake.script(Fault.status(500, "upstream exploded"))
        await call("upstream-500", "POST", chat, good, json=body("quiet", "fail now"))
        fake.script(Fault.stream_error(after=2))
        await call("stream-error", "POST", chat, good, json=body("quiet", "cut", stream=True))
        await call("models", "GET", f"{base}/v1/models", good)
        await call("session", "GET", f"{base}/v1/sessions/conversation-1", good)
        await call("spend", "GET", f"{base}/v1/spend", good)
        await call("usage", "GET", f"{base}/v1/usage?group_by=key,route,backend", good)
        await call("usage-wrong", "GET", f"{base}/v1/usage", wrong)
        await call("not-found", "GET", f"{base}/v1/nothing", good)
        async with s.get(f"{base}/metrics") as r:
            seen.statuses["metrics"] = r.status
            seen.metrics = await r.text()
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        request = pb.ChatRequest(
            model="quiet", messages=[pb.ChatMessage(role="user", content="grpc hello")]
        )
        for name, key in (("grpc-ok", CALLER_KEY), ("grpc-wrong", WRONG_CALLER_KEY)):
            try:
                reply = await stub.Chat(request, metadata=(("authorization", f"Bearer {key}"),))
                seen.answers.append(f"{name} {reply}")
            except grpc.aio.AioRpcError as err:
                seen.answers.append(
                    f"{name} {err.code()} {err.details()} {err.trailing_metadata()!r}"
                )


@pytest.fixture(scope="module")
def seen(redis_server: str) -> Iterator[Seen]:
    conn = redis_client.Redis.from_url(redis_server)
    conn.flushall()
    conn.close()
    result = Seen()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def main() -> None:
        async with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
            snapshot = snapshot_from_yaml(objects(fake.url))
            result.snapshot_forms = _printable(snapshot)
            settings = replace(
                TEST_SETTINGS,
                anonymous_tenant=None,
                redis_url=redis_server,
                traces_exporter="none",
                tracer_provider=provider,
            )
            async with gateway_with(snapshot, settings) as running:
                base = f"http://127.0.0.1:{running.http_port}"
                await _requests(base, f"127.0.0.1:{running.grpc_port}", fake, result)
                sink = usage_sink(running.gateway)
                assert sink is not None
                await sink.flush()
                events = await sink.store.recent(1000)
                result.usage_events = json.dumps([e.as_json() for e in events])
                assert len(events) == 9, result.usage_events  # the authenticated calls
            # the upstream saw the right key, and the stale one for the stale backend
            sent = {r.header("authorization") for r in fake.requests}
            assert f"Bearer {PROVIDER_KEY}" in sent and f"Bearer {WRONG_PROVIDER_KEY}" in sent

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        root.removeHandler(keep)
        root.setLevel(saved)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = []
    for record in records:
        text = formatter.format(record)
        lines.append(text + " " + repr(record.__dict__))
        if record.name == ACCESS_LOGGER:
            fields = json.loads(record.getMessage())
            result.access[fields["request_id"]] = fields
    result.logs = "\n".join(lines)
    result.spans = "\n".join(span.to_json() for span in exporter.get_finished_spans())
    result.redis_dump = _dump_redis(redis_server)
    yield result


def _printable(snapshot: Snapshot) -> str:
    forms = [
        str(snapshot),
        repr(snapshot),
        snapshot.model_dump_json(),
        str(snapshot.model_dump()),
        json.dumps(snapshot.model_dump(mode="json")),
    ]
    forms += [str(b) for b in snapshot.backends.values()]
    forms += [repr(b.api_key) for b in snapshot.backends.values()]
    return "\n".join(forms)


def test_the_requests_happened_as_intended(seen: Seen) -> None:
    assert seen.statuses == {
        "ok": 200,
        "cached": 200,
        "logged": 200,
        "stream": 200,
        "wrong-key": 401,
        "no-bearer": 401,
        "unknown-model": 404,
        "upstream-401": 502,
        "upstream-500": 502,
        "stream-error": 200,
        "models": 200,
        "session": 200,
        "spend": 200,
        "usage": 200,
        "usage-wrong": 401,
        "not-found": 404,
        "metrics": 200,
    }
    assert seen.access["upstream-401"]["error_code"] == "upstream_auth_failed"
    assert seen.access["stream-error"]["outcome"] == "stream_error"
    assert seen.access["cached"]["cached"] is True
    assert "kanal_requests" in seen.metrics or "# TYPE" in seen.metrics
    assert seen.spans and seen.usage_events and seen.redis_dump and seen.logs
    assert "kanal:{usage}" in seen.redis_dump  # the usage stream is part of the dump


@pytest.mark.parametrize("secret", SECRETS)
def test_no_secret_anywhere(seen: Seen, secret: str) -> None:
    forms = {
        "plain": secret,
        "base64": base64.b64encode(secret.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(secret.encode()).decode(),
        "without prefix": secret.removeprefix("sk-"),
    }
    for where, text in seen.everything().items():
        for form, value in forms.items():
            assert value not in text, f"{form} form of a secret found in {where}"


def test_prompts_only_where_the_route_logs_content(seen: Seen) -> None:
    logs = seen.logs
    assert QUIET_PROMPT not in logs
    assert "quiet-prompt-marker" not in seen.spans and "quiet-prompt-marker" not in seen.metrics
    assert "prompt" not in seen.access["ok"]
    logged = seen.access["logged"]
    assert LOGGED_PROMPT in logged["prompt"] and logged["answer"]
    # and only in that request's log line
    carrying = [line for line in logs.splitlines() if "logged-prompt-marker" in line]
    assert carrying and all(line.startswith(ACCESS_LOGGER + " INFO ") for line in carrying)
    assert all('"request_id":"logged"' in line for line in carrying)
