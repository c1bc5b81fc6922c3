"""What rate limits and budgets cost per request: the same chat requests on the mock
backend through a real gateway, on a route with no policy, with a rate limit (requests and
tokens per minute, per key: check-and-reserve before, settle after), with a budget, and
with both; in memory and on Redis. Limits are set high enough never to refuse.

Two paths are timed: in process (``Gateway.prepare`` + ``Gateway.call``: the pipeline and
the store, nothing else) and over HTTP (aiohttp client -> gateway -> mock, sequential).

    .venv/bin/python tests/integration/policy/test_limits_cost.py [N]

(starts its own redis-server; N requests per variant, default 2000; best of 3 rounds).
The test below runs it small, so it keeps working; it checks results, never timings.
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

RATE = "rateLimit: {requestsPerMinute: 100000000, tokensPerMinute: 1000000000000, per: key}"
BUDGET = "budget: {usdPerDay: 1000000000}"
VARIANTS = {"plain": "", "limits": RATE, "budget": BUDGET, "both": f"{RATE}\n  {BUDGET}"}
YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}]
"""
for _name, _policy in VARIANTS.items():
    YAML += f"""---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: {_name}}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  {_policy}
"""
TEXT = "please tell me something about the weather in Zurich today"
# ("off" would be YAML for false: the policy-free route is "plain")
# no max_tokens: reservations assume the 4096-token default; the mock's real usage differs
# from the estimate, so every call also settles (one more store round trip)


def body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": TEXT}]}


async def measure(settings: GatewaySettings, n: int, rounds: int = 3) -> dict[str, float]:
    """Mean µs per request for each variant, in process and over HTTP (best of rounds)."""
    out: dict[str, float] = {}
    caller = Caller(tenant="default", key="bench")
    async with gateway_with(snapshot_from_yaml(YAML), settings) as running:
        gateway = running.gateway

        async def in_process(model: str, i: int) -> None:
            call = gateway.prepare(Operation.CHAT, caller, body(model), request_id=f"r{i}")
            answer = await gateway.call(call, Trace())
            assert answer["choices"][0]["message"]["content"].endswith(TEXT)

        for model in VARIANTS:
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                for i in range(n):
                    await in_process(model, i)
                samples.append((time.perf_counter() - started) / n * 1e6)
            out[f"in-process {model}"] = min(samples)
        base = f"http://127.0.0.1:{running.http_port}/v1/chat/completions"
        async with aiohttp.ClientSession() as http:
            for model in VARIANTS:
                samples = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    for _ in range(n):
                        async with http.post(base, json=body(model)) as r:
                            assert r.status == 200, await r.text()
                            await r.read()
                    samples.append((time.perf_counter() - started) / n * 1e6)
                out[f"http {model}"] = min(samples)
    return out


def report(kind: str, figures: dict[str, float]) -> str:
    lines = []
    for path in ("in-process", "http"):
        off = figures[f"{path} plain"]
        cells = [f"no policy {off:7.1f} µs"]
        for model in list(VARIANTS)[1:]:
            on = figures[f"{path} {model}"]
            cells.append(f"{model} {on:7.1f} µs ({on - off:+6.1f})")
        lines.append(f"{kind:6} {path:10} " + "   ".join(cells))
    return "\n".join(lines)


def test_limits_cost_runs(redis_url: str) -> None:
    for settings in (TEST_SETTINGS, replace(TEST_SETTINGS, redis_url=redis_url)):
        figures = asyncio.run(measure(settings, 10, rounds=1))
        assert set(figures) == {f"{p} {v}" for p in ("in-process", "http") for v in VARIANTS}
        assert all(v > 0 for v in figures.values())


def main() -> None:
    import uvloop  # what `kanal up` runs on

    from harness import RedisServer, find_redis_server

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"{n} sequential requests per variant, best of 3 rounds, uvloop; (+x) = over none")
    print(report("memory", uvloop.run(measure(TEST_SETTINGS, n))))
    with RedisServer(find_redis_server()) as server:
        settings = replace(TEST_SETTINGS, redis_url=server.url)
        print(report("redis", uvloop.run(measure(settings, n))))


if __name__ == "__main__":
    main()
