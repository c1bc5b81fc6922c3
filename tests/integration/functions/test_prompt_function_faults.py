"""The prompt function streaming from a real upstream that fails mid-answer, and a caller that
leaves mid-stream: a plain function process, a real gateway, a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from fnkit import HAIKU_PROMPT, FunctionProcess, start_function, stop_function

from fakes import DEFAULT_TEXT, FakeOpenAI, Fault
from gwkit import gateway_with, snapshot_from_yaml
from kanal.gateway.service import Gateway
from kanal.gateway.telemetry._usage import UsageEvent
from kanal.gateway.usage_api import usage_sink

pytestmark = pytest.mark.integration

PROVIDER_KEY = "sk-upstream-functions-test-0123456789"


def objects(upstream: str) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: openai-key}}
stringData: {{apiKey: {PROVIDER_KEY}}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: openai}}
spec:
  provider: openai
  endpoint: {upstream}
  credentials: {{secretRef: {{name: openai-key, key: apiKey}}}}
  models: [{{name: gpt-4o-mini, contextWindow: 128000}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: haiku}}
spec:
  backends: [{{backendRef: {{name: openai}}, model: gpt-4o-mini}}]
  retry: {{attempts: 0}}
  prompt: {json.dumps(HAIKU_PROMPT)}
"""


@dataclass
class Setup:
    fake: FakeOpenAI
    gateway: Gateway
    function: FunctionProcess
    session: aiohttp.ClientSession

    async def event(self, outcome: str, timeout: float = 5.0) -> UsageEvent:
        """The gateway's usage event of the function's call, once it has that outcome."""
        sink = usage_sink(self.gateway)
        assert sink is not None
        deadline = time.monotonic() + timeout
        while True:
            await sink.flush()
            for found in await sink.store.recent(100):
                if found.outcome == outcome:
                    return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no usage event with outcome {outcome}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with (
        FakeOpenAI(api_key=PROVIDER_KEY) as fake,
        gateway_with(snapshot_from_yaml(objects(fake.url))) as running,
    ):
        env = {
            "KANAL_ROUTE": "haiku",
            "KANAL_ROUTE_NAMESPACE": "default",
            "KANAL_MODEL": "haiku",
            "KANAL_GATEWAY_GRPC": f"127.0.0.1:{running.grpc_port}",
            "KANAL_PROMPT": json.dumps(HAIKU_PROMPT),
        }
        function = await asyncio.to_thread(
            start_function, "kanal_functions.prompt", env, tmp_path / "fn.log"
        )
        try:
            async with aiohttp.ClientSession() as session:
                yield Setup(fake, running.gateway, function, session)
        finally:
            await asyncio.to_thread(stop_function, function)


def run(tmp_path: Path, check: Callable[[Setup], Awaitable[None]]) -> None:
    async def main() -> None:
        async with setup(tmp_path) as s:
            await check(s)

    asyncio.run(main())


def test_an_upstream_failure_mid_stream_ends_the_sse_with_an_error_event(tmp_path: Path) -> None:
    async def check(s: Setup) -> None:
        # role chunk + 2 words of the fake's answer, then the upstream connection is reset
        s.fake.script(Fault.reset(after=3))
        async with s.session.post(
            s.function.url + "/?stream=true", json={"topic": "the sea"}
        ) as reply:
            assert reply.status == 200
            text = await reply.text()
        events = [block.removeprefix("data: ") for block in text.strip().split("\n\n")]
        assert "[DONE]" not in events  # a cut answer never looks complete
        *outputs, last = [json.loads(e) for e in events]
        assert outputs and all("output" in e for e in outputs)
        assert "".join(e["output"] for e in outputs).split() == DEFAULT_TEXT.split()[:2]
        error = last["error"]
        assert error["code"] and error["message"]
        assert PROVIDER_KEY not in text
        # the gateway counted it as a stream that broke after it started
        event = await s.event("stream_error")
        assert event.route == "default/haiku" and event.status == 200

    run(tmp_path, check)


def test_a_caller_leaving_mid_stream_cancels_the_upstream(tmp_path: Path) -> None:
    async def check(s: Setup) -> None:
        s.fake.script(Fault.ok("one two three four five six", pause_after=3))
        async with s.session.post(
            s.function.url + "/?stream=true", json={"topic": "the sea"}
        ) as reply:
            assert reply.status == 200
            seen = ""
            async for line in reply.content:
                seen += line.decode()
                if "two" in seen:
                    break
            assert reply.connection is not None
            reply.connection.transport.abort()  # type: ignore[union-attr]
        # function -> gateway (gRPC cancelled) -> upstream: billed for what was produced
        event = await s.event("client_disconnected")
        assert event.route == "default/haiku" and event.usage_source == "estimated"
        assert 0 < event.output_tokens < 6
        s.fake.resume()

    run(tmp_path, check)
