"""Exactness across gateway processes: two `kanal up --redis` on one Redis, ~200 concurrent
requests split between them; exactly the limit is admitted, budgets never overshoot.
Plus the same CLI with its Redis down, failing closed and (with --redis-fail-open) open."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_client

from harness.procs import Proc, free_ports, wait_until

MANIFESTS = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}]
"""
ROUTES = {
    "rpm": "rateLimit: {requestsPerMinute: 40, per: route}",
    "tpm": "rateLimit: {tokensPerMinute: 400, per: route}",
    "tpm-loose": "rateLimit: {tokensPerMinute: 1000, per: route}",
    "usd": "budget: {usdPerDay: 0.00032}",
    "usd-loose": "budget: {usdPerDay: 0.001}",
}
for _name, _policy in ROUTES.items():
    MANIFESTS += f"""---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: {_name}}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  {_policy}
"""
WORDS8 = "a a a a a a a a"
"""8 tokens for the mock and for the gateway's estimate (15 chars / 4, + 4 per message)."""
EXACT = 12
"""max_tokens equal to the mock's 12-word reply: reservation == usage, so the admitted
count does not depend on timing: 8 + 12 = 20 tokens, 8 * $1e-6 + 12 * $2e-6 = $0.000032."""
REQUESTS = 200


@dataclass
class Gateway:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start(folder: Path, log: Path, redis_url: str, *extra: str) -> Gateway:
    port, grpc_port = free_ports(2)
    argv = [sys.executable, "-m", "kanal", "up", "-f", str(folder), "--port", str(port)]
    argv += ["--grpc-port", str(grpc_port), "--redis", redis_url, *extra]
    return Gateway(Proc(f"kanal up :{port}", argv, log), port)


def _ready(gw: Gateway) -> bool:
    with urllib.request.urlopen(gw.url + "/readyz", timeout=1) as r:
        return bool(r.status == 200)


@pytest.fixture(scope="module")
def gateways(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Gateway]]:
    """Two gateways on the test Redis, and two whose Redis is a closed port."""
    folder = tmp_path_factory.mktemp("manifests")
    (folder / "objects.yaml").write_text(MANIFESTS)
    logs = tmp_path_factory.mktemp("logs")
    (closed,) = free_ports(1)
    down = f"redis://127.0.0.1:{closed}/0"
    conn = redis_client.Redis.from_url(redis_server)
    try:
        conn.flushall()
    finally:
        conn.close()
    started = {
        "a": _start(folder, logs / "a.log", redis_server),
        "b": _start(folder, logs / "b.log", redis_server),
        "closed": _start(folder, logs / "closed.log", down),
        "open": _start(folder, logs / "open.log", down, "--redis-fail-open"),
    }
    try:
        for gw in started.values():
            wait_until(lambda gw=gw: _ready(gw), gw.proc, "ready", 30)
        yield started
    finally:
        for gw in started.values():
            gw.proc.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


async def _fire(
    targets: list[Gateway], model: str, count: int = REQUESTS, **fields: Any
) -> list[Reply]:
    body = {"model": model, "messages": [{"role": "user", "content": WORDS8}], **fields}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = asyncio.Event()

        async def one(i: int) -> Reply:
            await start.wait()
            url = targets[i % len(targets)].url + "/v1/chat/completions"
            async with session.post(url, json=body) as r:
                return Reply(r.status, dict(r.headers), await r.json())

        tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
        await asyncio.sleep(0.05)
        start.set()  # all at once
        return await asyncio.gather(*tasks)


def fire(targets: list[Gateway], model: str, **fields: Any) -> list[Reply]:
    return asyncio.run(_fire(targets, model, **fields))


def _spend(gw: Gateway) -> Any:
    with urllib.request.urlopen(gw.url + "/v1/spend", timeout=5) as r:
        return json.load(r)


def split(replies: list[Reply]) -> tuple[list[Reply], list[Reply]]:
    ok = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 429]
    assert len(ok) + len(refused) == len(replies), {r.status for r in replies}
    return ok, refused


def assert_retry_after(refused: list[Reply], most: int = 60) -> None:
    for r in refused:
        assert 1 <= int(r.headers["Retry-After"]) <= most, r.headers


def test_requests_per_minute_is_exact_across_two_processes(gateways: dict[str, Gateway]) -> None:
    started = time.monotonic()
    ok, refused = split(fire([gateways["a"], gateways["b"]], "rpm"))
    elapsed = time.monotonic() - started
    print(f"\nrpm 40: {len(ok)} admitted, {len(refused)} refused of {REQUESTS} in {elapsed:.2f}s")
    assert len(ok) == 40 and len(refused) == REQUESTS - 40
    assert {r.headers["x-kanal-backend"] for r in ok} == {"default/mock"}
    assert_retry_after(refused)
    for r in refused:
        assert r.body["error"]["code"] == "rate_limit_exceeded"
        assert "40 requests per minute for the whole route" in r.body["error"]["message"]
        assert r.headers["x-ratelimit-limit-requests"] == "40"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(40))  # every admitted request saw its own count


def test_both_processes_share_one_counter(gateways: dict[str, Gateway]) -> None:
    a, b = gateways["a"], gateways["b"]
    body = {"model": "rpm", "messages": [{"role": "user", "content": "x"}]}

    async def one(gw: Gateway) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(gw.url + "/v1/chat/completions", json=body) as r,
        ):
            return r.status

    # the previous test used the window up on both: neither process has a private count
    assert asyncio.run(one(a)) == 429
    assert asyncio.run(one(b)) == 429


def test_tokens_per_minute_is_exact_across_two_processes(gateways: dict[str, Gateway]) -> None:
    ok, refused = split(fire([gateways["a"], gateways["b"]], "tpm", max_tokens=EXACT))
    print(f"\ntpm 400 at 20/request: {len(ok)} admitted, {len(refused)} refused")
    assert len(ok) == 400 // 20
    assert all(r.body["usage"]["total_tokens"] == 20 for r in ok)
    assert_retry_after(refused)
    assert all("400 tokens per minute" in r.body["error"]["message"] for r in refused)
    assert {r.headers["x-ratelimit-remaining-tokens"] for r in refused} == {"0"}


def test_token_reservations_never_let_usage_pass_the_limit(gateways: dict[str, Gateway]) -> None:
    """Reserving 58 (max_tokens 50), using 20: settling frees room, so more than
    1000 // 58 = 17 may pass, but never more than the limit in real tokens."""
    ok, refused = split(fire([gateways["a"], gateways["b"]], "tpm-loose", max_tokens=50))
    used = sum(r.body["usage"]["total_tokens"] for r in ok)
    print(f"\ntpm 1000 reserving 58, using 20: {len(ok)} admitted, {used} tokens used")
    assert 1000 // 58 <= len(ok) <= 1000 // 20
    assert used <= 1000
    assert_retry_after(refused)


def test_day_budget_is_exact_across_two_processes(gateways: dict[str, Gateway]) -> None:
    ok, refused = split(fire([gateways["a"], gateways["b"]], "usd", max_tokens=EXACT))
    spend = _spend(gateways["b"])["routes"]["usd"]
    print(f"\nusd 0.00032 at 0.000032/request: {len(ok)} admitted, spend {spend['day']}")
    assert len(ok) == 10
    assert round(spend["day"] * 1e9) == 10 * 32_000 == round(0.00032 * 1e9)
    for r in refused:
        assert r.body["error"]["code"] == "budget_exceeded"
        assert "the day budget (usdPerDay) is $0.00032" in r.body["error"]["message"]
    assert_retry_after(refused, most=86_400)


def test_budget_spend_matches_the_settled_costs_and_stays_under_the_cap(
    gateways: dict[str, Gateway],
) -> None:
    """Reserving $0.000108 (max_tokens 50), costing $0.000032: the spend is the sum of
    the admitted calls' real costs and never above the cap."""
    ok, refused = split(fire([gateways["a"], gateways["b"]], "usd-loose", max_tokens=50))
    costs = sum(
        r.body["usage"]["prompt_tokens"] * 1000 + r.body["usage"]["completion_tokens"] * 2000
        for r in ok
    )
    spend = _spend(gateways["a"])["routes"]["usd-loose"]
    print(f"\nusd 0.001 reserving 0.000108, costing 0.000032: {len(ok)} admitted, spend {spend}")
    assert round(spend["day"] * 1e9) == costs <= 1_000_000
    assert 1_000_000 // 108_000 <= len(ok) <= 1_000_000 // 32_000
    assert_retry_after(refused, most=86_400)  # until midnight UTC


def test_redis_down_fails_closed_by_default_and_open_when_asked(
    gateways: dict[str, Gateway],
) -> None:
    closed = fire([gateways["closed"]], "rpm")[:5]
    assert {r.status for r in closed} == {503}
    assert closed[0].body["error"]["code"] == "limits_unavailable"
    assert {r.status for r in fire([gateways["closed"]], "usd", max_tokens=EXACT)} == {503}
    opened = fire([gateways["open"]], "rpm")
    assert {r.status for r in opened} == {200}  # 200 > 40: admitted unchecked
    # the whole log: one request-log line per request follows the warning
    assert "Redis unreachable for rate limits" in gateways["open"].proc.log.read_text()
    assert "refusing requests with 503" in gateways["closed"].proc.log.read_text()
