"""Rate limits through a whole gateway on 127.0.0.1: HTTP (raw and the openai SDK) and
gRPC, in memory and on the real Redis; settling after streams and errors; Redis down."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
import openai
import pytest

from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml, threaded_gateway
from kanal.gateway.policy.budget import BudgetPolicy
from kanal.gateway.policy.limits import LimitsPolicy
from kanal.gateway.server import RunningGateway
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models:
    - {name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}
    - {name: error-500, contextWindow: 8192}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: per-key}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  rateLimit: {requestsPerMinute: 2, per: key}
  access: {namespaces: [team-b]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: per-namespace}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  rateLimit: {requestsPerMinute: 2, per: namespace}
  access: {namespaces: [team-b]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: per-route}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  rateLimit: {requestsPerMinute: 2, per: route}
  access: {namespaces: [team-b]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: tokens}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  rateLimit: {tokensPerMinute: 100, per: route}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: broken}
spec:
  backends: [{backendRef: {name: mock}, model: error-500}]
  retry: {attempts: 0}
  rateLimit: {requestsPerMinute: 5, tokensPerMinute: 100, per: route}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: budgeted}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  budget: {usdPerDay: 1}
---
apiVersion: v1
kind: Secret
metadata: {name: k1, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-one}
---
apiVersion: v1
kind: Secret
metadata: {name: k2, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-two}
---
apiVersion: v1
kind: Secret
metadata: {name: k3, namespace: team-b, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-three}
"""
WORDS8 = "a a a a a a a a"  # the mock counts 8 tokens; the gateway estimates 8 too
SNAPSHOT = snapshot_from_yaml(YAML)

Check = Callable[["Client"], Awaitable[None]]


class Client:
    def __init__(self, session: aiohttp.ClientSession, running: RunningGateway) -> None:
        self.session = session
        self.running = running
        self.base = f"http://127.0.0.1:{running.http_port}"

    def policy(self, kind: type[Any]) -> Any:
        return next(p for p in self.running.gateway.policies if isinstance(p, kind))

    async def chat(
        self, model: str, key: str | None = "sk-one", **fields: Any
    ) -> tuple[int, dict[str, str], Any]:
        body = {"model": model, "messages": [{"role": "user", "content": WORDS8}], **fields}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.session.post(
            f"{self.base}/v1/chat/completions", json=body, headers=headers
        ) as r:
            if r.content_type == "text/event-stream":
                payload: Any = await r.text()
            else:
                payload = await r.json()
            return r.status, dict(r.headers), payload


def run(check: Check, redis_url: str | None = None, **settings: Any) -> None:
    async def main() -> None:
        config = replace(TEST_SETTINGS, redis_url=redis_url, **settings)
        async with gateway_with(SNAPSHOT, config) as running, aiohttp.ClientSession() as session:
            await check(Client(session, running))

    asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_headers_on_success_and_429_naming_the_limit(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        status, headers, _ = await c.chat("per-key")
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "1"
        assert headers["x-ratelimit-reset-requests"] in ("1m0s", "59.999s", "59.998s")
        assert "x-ratelimit-limit-tokens" not in headers  # no token limit on this route
        assert (await c.chat("per-key"))[1]["x-ratelimit-remaining-requests"] == "0"
        status, headers, body = await c.chat("per-key")
        assert status == 429
        assert headers["Retry-After"] == "60"
        assert 59_000 < int(headers["retry-after-ms"]) <= 60_000
        assert headers["x-ratelimit-remaining-requests"] == "0"
        error = body["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert "2 requests per minute per key key:default/k1" in error["message"]
        assert "route default/per-key" in error["message"]

    run(check, store_url)


def test_scopes_per_key_namespace_and_route(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        async def statuses(model: str, keys: list[str]) -> list[int]:
            return [(await c.chat(model, key=k))[0] for k in keys]

        # per key: each key its own 2
        assert await statuses("per-key", ["sk-one"] * 3 + ["sk-two"] * 3) == [200, 200, 429] * 2
        # per namespace: k1 and k2 (default) share 2; k3 (team-b) has its own
        assert await statuses("per-namespace", ["sk-one", "sk-two", "sk-one", "sk-three"]) == [
            200,
            200,
            429,
            200,
        ]
        # per route: everybody shares 2
        _, _, body = await c.chat("per-namespace", key="sk-two")
        assert "per namespace default" in body["error"]["message"]
        assert await statuses("per-route", ["sk-one", "sk-three", "sk-two"]) == [200, 200, 429]
        _, _, body = await c.chat("per-route", key="sk-three")
        assert "for the whole route" in body["error"]["message"]

    run(check, store_url)


def test_tokens_settle_to_usage_after_a_stream(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        # reserves 8 + 80 = 88 of 100; the mock answers 12 words: settles to 20
        status, headers, text = await c.chat("tokens", stream=True, max_tokens=80)
        assert status == 200 and text.rstrip().endswith("[DONE]")
        assert headers["x-ratelimit-remaining-tokens"] == "12"
        # 20 + (8 + 70) = 98 fits only because the stream settled
        status, headers, body = await c.chat("tokens", max_tokens=70)
        assert status == 200, body
        assert headers["x-ratelimit-remaining-tokens"] == "2"
        status, headers, body = await c.chat("tokens", max_tokens=70)
        assert status == 429
        assert "100 tokens per minute for the whole route" in body["error"]["message"]
        assert "this request reserves 78" in body["error"]["message"]
        assert headers["x-ratelimit-remaining-tokens"] == "60"  # 20 + 20 counted
        assert headers["Retry-After"] == "60"

    run(check, store_url)


def test_a_failed_call_releases_its_tokens_but_counts_as_a_request(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        for remaining in ("4", "3", "2"):
            status, headers, _ = await c.chat("broken", max_tokens=80)  # reserves 88 of 100
            assert status == 502
            assert headers["x-ratelimit-remaining-requests"] == remaining
            assert headers["x-ratelimit-remaining-tokens"] == "12"  # the earlier 88s released

    run(check, store_url)


def test_a_request_that_can_never_fit_is_400_naming_max_tokens(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        status, _, body = await c.chat("tokens", max_tokens=500)
        assert status == 400
        assert body["error"]["code"] == "exceeds_rate_limit"
        assert body["error"]["param"] == "max_tokens"
        assert "set max_tokens to at most 92" in body["error"]["message"]

    run(check, store_url)


def test_redis_down_fails_closed_with_503_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def check(c: Client) -> None:
        limits, budget = c.policy(LimitsPolicy), c.policy(BudgetPolicy)
        for _ in range(3):
            status, headers, body = await c.chat("per-key")
            assert status == 503, body
            assert body["error"]["code"] == "limits_unavailable"
            assert headers["Retry-After"] == "1"
        assert limits.redis_failures == 3
        status, _, body = await c.chat("budgeted")
        assert status == 503 and body["error"]["code"] == "budget_unavailable"
        assert budget.redis_failures == 1
        auth = {"Authorization": "Bearer sk-one"}
        async with c.session.get(f"{c.base}/v1/spend", headers=auth) as r:
            assert r.status == 503
        assert budget.redis_failures == 2

    with caplog.at_level(logging.WARNING):
        run(check, closed_port_url(), redis_fail_open=False)
    warnings = [r.getMessage() for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 2  # one per policy: rate-limited, not one per request
    assert any("rate limits" in w and "refusing requests with 503" in w for w in warnings)


def test_redis_down_fails_open_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    async def check(c: Client) -> None:
        limits, budget = c.policy(LimitsPolicy), c.policy(BudgetPolicy)
        for _ in range(4):  # beyond the limit of 2: nothing is counted anywhere
            status, headers, _ = await c.chat("per-key")
            assert status == 200
            assert "x-ratelimit-limit-requests" not in headers
        assert limits.redis_failures == 4
        assert (await c.chat("budgeted"))[0] == 200
        assert budget.redis_failures == 1

    with caplog.at_level(logging.WARNING):
        run(check, closed_port_url(), redis_fail_open=True)
    assert any("admitting requests unchecked" in r.getMessage() for r in caplog.records)


def test_a_hung_redis_costs_one_timeout_not_one_per_request() -> None:
    async def main() -> None:
        held: list[asyncio.StreamWriter] = []

        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accepts and never answers

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = replace(
            TEST_SETTINGS,
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_timeout=0.2,
            redis_fail_open=True,
        )
        try:
            async with (
                gateway_with(SNAPSHOT, config) as running,
                aiohttp.ClientSession() as session,
            ):
                c = Client(session, running)
                started = loop.time()
                for _ in range(10):
                    assert (await c.chat("per-key"))[0] == 200
                elapsed = loop.time() - started
                assert c.policy(LimitsPolicy).redis_failures == 10
                assert 0.2 <= elapsed < 0.2 + 0.5  # one timeout, then the breaker answers
        finally:
            for writer in held:
                writer.close()
            server.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_openai_sdk_sees_the_headers_and_a_rate_limit_error(redis_url: str) -> None:
    with threaded_gateway(SNAPSHOT, redis_url=redis_url) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="sk-one", max_retries=0)
        messages: Any = [{"role": "user", "content": WORDS8}]
        raw = client.chat.completions.with_raw_response.create(model="per-key", messages=messages)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        assert raw.parse().choices[0].message.content
        client.chat.completions.create(model="per-key", messages=messages)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="per-key", messages=messages)
        assert info.value.status_code == 429
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.response.headers["retry-after"] == "60"
        assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_grpc_is_limited_by_the_same_counters(redis_url: str) -> None:
    with (
        threaded_gateway(SNAPSHOT, redis_url=redis_url) as gw,
        grpc.insecure_channel(gw.grpc_target) as channel,
    ):
        stub = pb_grpc.GatewayStub(channel)
        request = pb.ChatRequest(
            model="per-key", messages=[pb.ChatMessage(role="user", content=WORDS8)]
        )
        auth = (("authorization", "Bearer sk-one"),)
        _, call = stub.Chat.with_call(request, metadata=auth, timeout=10)
        assert dict(call.initial_metadata())["x-ratelimit-remaining-requests"] == "1"

        async def over_http() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    gw.base_url + "/chat/completions",
                    json={"model": "per-key", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": "Bearer sk-one"},
                ) as r,
            ):
                return r.status

        assert asyncio.run(over_http()) == 200  # the second of 2, shared with gRPC
        with pytest.raises(grpc.RpcError) as info:
            stub.Chat(request, metadata=auth, timeout=10)
        err: Any = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 requests per minute per key" in err.details()
        trailing = dict(err.trailing_metadata() or ())
        assert trailing["retry-after"] == "60"
        assert trailing["x-kanal-error-code"] == "rate_limit_exceeded"
        assert trailing["x-ratelimit-limit-requests"] == "2"  # as HTTP sends them
        assert trailing["x-ratelimit-remaining-requests"] == "0"
