"""Pure pieces of the rate-limit policy: header durations, reservation ids, what a call
settles to, scopes and messages, rate-limited warnings (memory store, fake clock)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gwkit import snapshot_from_yaml
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy import _limits_common
from kanal.gateway.policy._limits_common import (
    RedisHealth,
    duration,
    new_member,
    reserved_output,
    retry_seconds,
)
from kanal.gateway.policy._limits_store import MemoryLimitStore
from kanal.gateway.policy.base import Call, Caller, Outcome, Usage
from kanal.gateway.policy.limits import LimitsPolicy, settled_tokens
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores

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
metadata: {name: chat}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  rateLimit: {requestsPerMinute: 2, tokensPerMinute: 100, per: namespace}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: plain}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
"""
SNAPSHOT = snapshot_from_yaml(YAML)
ROUTE = SNAPSHOT.routes["default/chat"]


def call(prompt: int = 10, output: int = 20, op: Any = "chat", tenant: str = "team-a") -> Call:
    return Call(
        op=op,
        caller=Caller(tenant, key="k1"),
        route=ROUTE,
        body={},
        request_id="req-1",
        estimated_prompt_tokens=prompt,
        max_output_tokens=output,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0004, "1ms"),
        (0.25, "250ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (12.5, "12.5s"),
        (59.9991, "1m0s"),
        (60, "1m0s"),
        (61.25, "1m1.25s"),
    ],
)
def test_durations_are_written_like_openai_and_never_early(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert [retry_seconds(s) for s in (0, 0.01, 1, 1.001, 59.2)] == [1, 1, 1, 2, 60]


def test_reservation_ids_are_unique_even_for_a_reused_request_id() -> None:
    ids = {new_member("same") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("same|") for i in ids)


def test_what_a_call_settles_to() -> None:
    c = call(prompt=10, output=20)
    assert settled_tokens(c, Outcome(usage=Usage(7, 5))) == 12
    assert settled_tokens(c, Outcome(usage=Usage(7, 3, "estimated"))) == 10  # cut-short stream
    failed = Outcome(error=GatewayError(502, "upstream failed"))
    assert settled_tokens(c, failed) == 0
    assert settled_tokens(c, Outcome()) == 10  # caller left before any answer


def test_policy_is_only_in_chains_of_routes_with_a_rate_limit() -> None:
    policy = LimitsPolicy(Stores(GatewaySettings()))
    assert policy.enabled(ROUTE)
    assert not policy.enabled(SNAPSHOT.routes["default/plain"])
    assert isinstance(policy.store, MemoryLimitStore)


def test_memory_policy_reserves_refuses_and_settles_per_namespace() -> None:
    async def main() -> None:
        now = [1000.0]
        policy = LimitsPolicy(Stores(GatewaySettings()))
        policy.store = MemoryLimitStore(clock=lambda: now[0])
        first = call(prompt=10, output=20)
        assert await policy.before(first) is None
        assert first.headers == {
            "x-ratelimit-limit-requests": "2",
            "x-ratelimit-remaining-requests": "1",
            "x-ratelimit-reset-requests": "1m0s",
            "x-ratelimit-limit-tokens": "100",
            "x-ratelimit-remaining-tokens": "70",
            "x-ratelimit-reset-tokens": "1m0s",
        }
        await policy.after(first, Outcome(usage=Usage(10, 5)))  # 30 reserved -> 15 used
        await policy.after(first, Outcome(usage=Usage(90, 90)))  # settled already: ignored
        now[0] += 20
        other_tenant = call(prompt=80, output=20, tenant="team-b")
        assert await policy.before(other_tenant) is None  # its own namespace counter
        second = call(prompt=75, output=10)
        assert await policy.before(second) is None
        assert second.headers["x-ratelimit-remaining-tokens"] == "0"  # 15 settled + 85
        third = call(prompt=1, output=0)
        with pytest.raises(GatewayError) as info:
            await policy.before(third)
        err = info.value
        assert err.status == 429 and err.retry_after == 40
        assert "2 requests per minute per namespace team-a" in err.message
        assert third.headers["retry-after-ms"] == "40000"

    asyncio.run(main())


def test_embeddings_reserve_no_output_tokens() -> None:
    async def main() -> None:
        policy = LimitsPolicy(Stores(GatewaySettings()))
        c = call(prompt=90, output=4096, op="embeddings")
        assert await policy.before(c) is None
        assert c.headers["x-ratelimit-remaining-tokens"] == "10"

    asyncio.run(main())


def test_a_request_larger_than_the_token_limit_is_400() -> None:
    async def main() -> None:
        policy = LimitsPolicy(Stores(GatewaySettings()))
        with pytest.raises(GatewayError) as info:
            await policy.before(call(prompt=30, output=4096))
        assert info.value.status == 400 and info.value.param == "max_tokens"
        assert "set max_tokens to at most 70" in info.value.message
        with pytest.raises(GatewayError) as info:
            await policy.before(call(prompt=300, output=10))
        assert info.value.param == "messages" and "shorten the input" in info.value.message

    asyncio.run(main())


def test_redis_failures_are_counted_always_and_logged_at_most_every_few_seconds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(_limits_common.time, "monotonic", lambda: clock[0])
    health = RedisHealth("rate limits", logging.getLogger("test.limits"))
    with caplog.at_level(logging.WARNING, "test.limits"):
        for _ in range(5):
            health.record(ConnectionError("refused"), fail_open=False)
        clock[0] += _limits_common.LOG_EVERY
        health.record(ConnectionError("refused"), fail_open=True)
    assert health.failures == 6
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "1 failure(s) since last report, 1 in all" in messages[0]
    assert "refusing requests with 503" in messages[0]
    assert "5 failure(s) since last report, 6 in all" in messages[1]
    assert "admitting requests unchecked" in messages[1]


def test_after_a_failure_redis_is_not_asked_for_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(_limits_common.time, "monotonic", lambda: clock[0])
    health = RedisHealth("rate limits", logging.getLogger("test.limits"))
    health.check()  # nothing failed yet
    health.record(TimeoutError("hung"), fail_open=True)
    with pytest.raises(_limits_common.BreakerOpen) as info:
        health.check()
    health.record(info.value, fail_open=True)  # skipped calls count as failures too
    assert health.failures == 2
    clock[0] += _limits_common.BREAKER_SECONDS
    health.check()  # asks Redis again


def test_reservations_cover_every_choice_asked_for() -> None:
    c = call(prompt=10, output=20)
    assert reserved_output(c) == 20
    c.body = {"n": 3}
    assert reserved_output(c) == 60
    c.body = {"n": True}  # not a count
    assert reserved_output(c) == 20
    assert reserved_output(call(output=20, op="embeddings")) == 0
