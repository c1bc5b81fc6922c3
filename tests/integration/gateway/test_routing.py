"""Routing against fake upstreams that fail on purpose: weights, fallback, retries,
Retry-After, cooldowns, timeouts, concurrency, mid-stream failures, disconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from fakes import FakeOpenAI, Fault, refused_url
from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from kanal.gateway.settings import GatewaySettings

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


def backend(name: str, url: str, extra: str = "") -> str:
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: {name}}}
spec:
  provider: openai-compatible
  endpoint: {url}
  models: [{{name: m, contextWindow: 8192}}]
  {extra}
"""


def route(backends: list[tuple[str, int, int]], policy: str = "") -> str:
    """backends: (name, weight, priority)."""
    entries = "\n".join(
        f"    - {{backendRef: {{name: {n}}}, model: m, weight: {w}, priority: {p}}}"
        for n, w, p in backends
    )
    return f"""
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat}}
spec:
  backends:
{entries}
{policy}
"""


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def chat(self, body: dict[str, Any] = CHAT) -> tuple[int, dict[str, Any], Any]:
        async with self.session.post(f"{self.base}/v1/chat/completions", json=body) as r:
            return r.status, dict(r.headers), await r.json()

    async def stream(self, body: dict[str, Any] = CHAT) -> tuple[int, list[Any]]:
        events: list[Any] = []
        async with self.session.post(
            f"{self.base}/v1/chat/completions", json={**body, "stream": True}
        ) as r:
            if r.status != 200:
                return r.status, [await r.json()]
            async for line in r.content:
                if line.startswith(b"data: "):
                    payload = line[6:].strip()
                    events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
        return 200, events


async def serve(
    yaml_text: str, check: Callable[[Client], Awaitable[None]], settings: GatewaySettings
) -> None:
    async with (
        gateway_with(snapshot_from_yaml(yaml_text), settings) as running,
        aiohttp.ClientSession() as session,
    ):
        await check(Client(session, f"http://127.0.0.1:{running.http_port}"))


def run(coro: Awaitable[None], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


SETTINGS = replace(TEST_SETTINGS, cooldown_after_failures=3, cooldown_seconds=30)


def test_weighted_choice_within_a_tier() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            text = backend("a", a.url) + backend("b", b.url) + route([("a", 3, 0), ("b", 1, 0)])

            async def check(client: Client) -> None:
                for _ in range(400):
                    status, _, _ = await client.chat()
                    assert status == 200

            await serve(text, check, SETTINGS)
            # p = 0.75 over 400 draws: sd ~ 8.7, the bounds are more than 5 sd away
            assert 255 <= len(a.requests) <= 345, len(a.requests)
            assert len(a.requests) + len(b.requests) == 400

    run(main())


def test_fallback_to_next_tier_after_retries() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.status(500), Fault.status(503))
            text = (
                backend("a", a.url)
                + backend("b", b.url)
                + route([("a", 1, 0), ("b", 1, 1)], "  retry: {attempts: 1, backoff: 10ms}")
            )

            async def check(client: Client) -> None:
                status, headers, body = await client.chat()
                assert status == 200, body
                assert headers["x-kanal-backend"] == "default/b"
                assert headers["x-kanal-attempts"] == "3"

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 2 and len(b.requests) == 1

    run(main())


def test_client_errors_are_relayed_not_retried() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.status(400, "max_tokens is too large for this model"))
            text = backend("a", a.url) + backend("b", b.url) + route([("a", 1, 0), ("b", 1, 1)])

            async def check(client: Client) -> None:
                status, _, body = await client.chat()
                assert status == 400
                assert "max_tokens is too large" in body["error"]["message"]

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 1 and len(b.requests) == 0

    run(main())


def test_failures_outside_retry_on_are_not_retried() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.status(500))
            text = backend("a", a.url) + route(
                [("a", 1, 0)], '  retry: {attempts: 3, "on": [timeout]}'
            )

            async def check(client: Client) -> None:
                status, headers, body = await client.chat()
                assert status == 502
                assert body["error"]["code"] == "upstream_error"
                assert headers.get("x-kanal-attempts") is None

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 1

    run(main())


def test_retry_after_is_honoured_by_waiting_for_the_only_backend() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.rate_limited(1), Fault.ok("after the wait"))
            text = backend("a", a.url) + route([("a", 1, 0)], "  retry: {attempts: 2}")

            async def check(client: Client) -> None:
                started = time.monotonic()
                status, headers, body = await client.chat()
                assert status == 200, body
                assert body["choices"][0]["message"]["content"] == "after the wait"
                assert headers["x-kanal-attempts"] == "2"
                assert time.monotonic() - started >= 0.9  # it waited out Retry-After

            await serve(text, check, SETTINGS)

    run(main())


def test_rate_limited_backend_sits_out_while_another_serves() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.rate_limited(30))
            text = backend("a", a.url) + backend("b", b.url) + route([("a", 1000, 0), ("b", 1, 0)])

            async def check(client: Client) -> None:
                for _ in range(6):
                    status, headers, _ = await client.chat()
                    assert status == 200
                    assert headers["x-kanal-backend"] == "default/b"

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 1

    run(main())


def test_cooldown_after_repeated_failures() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(*[Fault.status(500)] * 3)
            text = (
                backend("a", a.url)
                + backend("b", b.url)
                + route([("a", 1, 0), ("b", 1, 1)], "  retry: {attempts: 0}")
            )

            async def check(client: Client) -> None:
                for _ in range(8):
                    status, headers, _ = await client.chat()
                    assert status == 200
                    assert headers["x-kanal-backend"] == "default/b"

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 3  # three failures, then it sat out
            assert len(b.requests) == 8

    run(main())


def test_request_timeout_is_504() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.hang())
            text = backend("a", a.url) + route([("a", 1, 0)], "  timeout: 1s")

            async def check(client: Client) -> None:
                started = time.monotonic()
                status, _, body = await client.chat()
                assert status == 504, body
                assert time.monotonic() - started < 10

            await serve(text, check, SETTINGS)

    run(main())


def test_connect_error_falls_back_and_alone_is_503() -> None:
    async def main() -> None:
        async with FakeOpenAI() as b:
            dead = refused_url()
            text = (
                backend("dead", dead) + backend("b", b.url) + route([("dead", 1, 0), ("b", 1, 1)])
            )

            async def check(client: Client) -> None:
                status, headers, _ = await client.chat()
                assert status == 200 and headers["x-kanal-backend"] == "default/b"

            await serve(text, check, SETTINGS)
            alone = backend("dead", dead) + route([("dead", 1, 0)], "  retry: {attempts: 0}")

            async def check_alone(client: Client) -> None:
                status, _, body = await client.chat()
                assert status == 503
                assert body["error"]["code"] == "upstream_unavailable"

            await serve(alone, check_alone, SETTINGS)

    run(main())


def test_malformed_json_is_502_after_retries() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.malformed_json(), Fault.malformed_json())
            text = backend("a", a.url) + route(
                [("a", 1, 0)], "  retry: {attempts: 1, backoff: 10ms}"
            )

            async def check(client: Client) -> None:
                status, _, body = await client.chat()
                assert status == 502
                assert body["error"]["type"] == "api_error"

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 2

    run(main())


def test_stream_failure_before_first_chunk_falls_back() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.malformed_sse(after=0))
            text = (
                backend("a", a.url)
                + backend("b", b.url)
                + route([("a", 1, 0), ("b", 1, 1)], "  retry: {attempts: 0}")
            )

            async def check(client: Client) -> None:
                status, events = await client.stream()
                assert status == 200
                assert events[-1] == "[DONE]"
                assert not any("error" in e for e in events if isinstance(e, dict))

            await serve(text, check, SETTINGS)
            assert len(a.requests) == 1 and len(b.requests) == 1

    run(main())


def test_failure_after_first_byte_is_reported_in_stream_without_switching() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a, FakeOpenAI() as b:
            a.script(Fault.reset(after=3))
            text = backend("a", a.url) + backend("b", b.url) + route([("a", 1, 0), ("b", 1, 1)])

            async def check(client: Client) -> None:
                status, events = await client.stream()
                assert status == 200
                chunks = [e for e in events if isinstance(e, dict) and "choices" in e]
                assert len(chunks) == 3
                assert "error" in events[-1]
                assert events[-1]["error"]["type"] == "api_error"
                assert "[DONE]" not in events

            await serve(text, check, SETTINGS)
            assert len(b.requests) == 0  # never switched backends mid-answer

    run(main())


def test_max_concurrency_per_backend() -> None:
    async def main() -> None:
        async with FakeOpenAI() as a:
            a.script(Fault.slow(0.4), Fault.slow(0.4), Fault.slow(0.4))
            text = backend("a", a.url, "limits: {maxConcurrency: 1}") + route([("a", 1, 0)])

            async def check(client: Client) -> None:
                started = time.monotonic()
                results = await asyncio.gather(*(client.chat() for _ in range(3)))
                assert [status for status, _, _ in results] == [200, 200, 200]
                # one at a time: three 0.4 s calls cannot finish in much under 1.2 s
                assert time.monotonic() - started >= 1.1

            await serve(text, check, SETTINGS)

    run(main())


def test_client_disconnect_cancels_the_upstream_call() -> None:
    upstream_cancelled = asyncio.Event()

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}],
        }
        try:
            for _ in range(200):
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionResetError):
            upstream_cancelled.set()
            raise
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", slow_stream)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            text = backend("slow", f"http://127.0.0.1:{port}/v1") + route([("slow", 1, 0)])

            async def check(client: Client) -> None:
                async with client.session.post(
                    f"{client.base}/v1/chat/completions", json={**CHAT, "stream": True}
                ) as r:
                    assert r.status == 200
                    await r.content.readline()
                    r.close()  # the caller goes away mid-stream
                await asyncio.wait_for(upstream_cancelled.wait(), 10)

            await serve(text, check, SETTINGS)
        finally:
            await runner.cleanup()

    run(main())
