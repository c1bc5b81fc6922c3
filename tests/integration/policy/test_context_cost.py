"""What conversation context costs per request: the same chat requests on the mock backend
through a real gateway, on a route with context and on one without, memory and Redis.

Two paths are timed: in process (``Gateway.prepare`` + ``Gateway.call``: the pipeline and
the store, nothing else) and over HTTP (aiohttp client -> gateway -> mock, sequential).
Context requests rotate over ``SESSIONS`` sessions that were filled to the message cap
first, so every timed turn loads, builds, appends and trims a full history.

    .venv/bin/python tests/integration/policy/test_context_cost.py [N]

(starts its own redis-server; N requests per variant, default 2000). The test below runs it
small, so it keeps working; it checks results, never timings.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, when run as a script

from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from kanal.gateway.policy.base import Caller
from kanal.gateway.router import Trace
from kanal.gateway.service import Operation
from kanal.gateway.settings import GatewaySettings

YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: plain}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: ctx}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  context: {maxTokens: 4000}
"""
SESSIONS = 20
MAX_MESSAGES = 40
TEXT = "please tell me something about the weather in Zurich today"


def body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": TEXT}]}


async def measure(settings: GatewaySettings, n: int) -> dict[str, float]:
    """Mean µs per request: in-process and HTTP, without and with context (in process also
    on the context route without a session id: the pipeline's own share)."""
    settings = replace(settings, context_max_turns=MAX_MESSAGES)
    out: dict[str, float] = {}
    caller = Caller(tenant="default")
    async with gateway_with(snapshot_from_yaml(YAML), settings) as running:
        gateway = running.gateway

        async def in_process(model: str, session: bool, i: int) -> None:
            call = gateway.prepare(
                Operation.CHAT,
                caller,
                body(model),
                request_id=f"r{i}",
                session_id=f"s{i % SESSIONS}" if session else None,
            )
            answer = await gateway.call(call, Trace())
            assert answer["choices"][0]["message"]["content"].endswith(TEXT)

        for i in range(SESSIONS * MAX_MESSAGES // 2):  # fill every session to the cap
            await in_process("ctx", True, i)
        stored = await gateway.context.read_session(caller, "s0")
        assert len(stored["routes"]["ctx"]["messages"]) == MAX_MESSAGES
        variants = (("off", "plain", False), ("no-session", "ctx", False), ("on", "ctx", True))
        for label, model, session in variants:
            samples = []
            for _ in range(3):  # best of three rounds, against noise
                started = time.perf_counter()
                for i in range(n):
                    await in_process(model, session, i)
                samples.append((time.perf_counter() - started) / n * 1e6)
            out[f"in-process {label}"] = min(samples)
        base = f"http://127.0.0.1:{running.http_port}/v1/chat/completions"
        async with aiohttp.ClientSession() as http:
            for label, model, session in (("off", "plain", False), ("on", "ctx", True)):
                samples = []
                for _ in range(3):
                    started = time.perf_counter()
                    for i in range(n):
                        headers = {"X-Session-Id": f"s{i % SESSIONS}"} if session else {}
                        async with http.post(base, json=body(model), headers=headers) as r:
                            assert r.status == 200
                            await r.read()
                    samples.append((time.perf_counter() - started) / n * 1e6)
                out[f"http {label}"] = min(samples)
    return out


def report(kind: str, figures: dict[str, float]) -> str:
    lines = []
    for path in ("in-process", "http"):
        off, on = figures[f"{path} off"], figures[f"{path} on"]
        line = f"{kind:6} {path:10} off {off:7.1f} µs   on {on:7.1f} µs   cost {on - off:+7.1f} µs"
        if f"{path} no-session" in figures:
            line += f"   (no session id: {figures[f'{path} no-session']:.1f} µs)"
        lines.append(line)
    return "\n".join(lines)


def test_context_cost_runs(redis_url: str) -> None:
    for settings in (TEST_SETTINGS, replace(TEST_SETTINGS, redis_url=redis_url)):
        figures = asyncio.run(measure(settings, 20))
        assert set(figures) == {
            "in-process off",
            "in-process no-session",
            "in-process on",
            "http off",
            "http on",
        }
        assert all(v > 0 for v in figures.values())


def main() -> None:
    from harness import RedisServer, find_redis_server

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"{n} sequential requests per variant; {SESSIONS} sessions of {MAX_MESSAGES} messages")
    print(report("memory", asyncio.run(measure(TEST_SETTINGS, n))))
    with RedisServer(find_redis_server()) as server:
        print(
            report("redis", asyncio.run(measure(replace(TEST_SETTINGS, redis_url=server.url), n)))
        )


if __name__ == "__main__":
    main()
