"""Budgets through a whole gateway on 127.0.0.1, in memory and on the real Redis: the 429
that names the budget, pricing by the backend that answered, GET /v1/spend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml

# prices per million tokens: cheap 1/2, dear 10/20; nano-USD per token = price * 1000
YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: cheap}
spec:
  provider: mock
  models:
    - {name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}
    - {name: error-503, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: dear}
spec:
  provider: mock
  models:
    - {name: mock-large, contextWindow: 8192, pricing: {inputPerMTok: 10, outputPerMTok: 20}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: daily}
spec:
  backends: [{backendRef: {name: cheap}, model: mock-small}]
  budget: {usdPerDay: 0.0001}
  access: {namespaces: [team-b]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: monthly}
spec:
  backends: [{backendRef: {name: cheap}, model: mock-small}]
  budget: {usdPerDay: 1, usdPerMonth: 0.00005}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: fallback}
spec:
  backends:
    - {backendRef: {name: cheap}, model: error-503, priority: 0}
    - {backendRef: {name: dear}, model: mock-large, priority: 1}
  retry: {attempts: 0}
  budget: {usdPerDay: 1}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: free}
spec:
  backends: [{backendRef: {name: cheap}, model: mock-small}]
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
WORDS8 = "a a a a a a a a"
# 8 prompt tokens (estimated and counted alike) + a 12-word reply with max_tokens 12:
COST_CHEAP = 8 * 1000 + 12 * 2000  # nano-USD = $0.000032, reserved and settled alike
SNAPSHOT = snapshot_from_yaml(YAML)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def chat(self, model: str, key: str = "sk-one", **fields: Any) -> tuple[int, Any, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": WORDS8}], **fields}
        async with self.session.post(
            f"{self.base}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as r:
            return r.status, r.headers, await r.json()

    async def spend(self, key: str = "sk-one") -> Any:
        async with self.session.get(
            f"{self.base}/v1/spend", headers={"Authorization": f"Bearer {key}"}
        ) as r:
            assert r.status == 200
            return await r.json()


def run(check: Callable[[Client], Awaitable[None]], redis_url: str | None) -> None:
    async def main() -> None:
        config = replace(TEST_SETTINGS, redis_url=redis_url)
        async with gateway_with(SNAPSHOT, config) as running, aiohttp.ClientSession() as session:
            await check(Client(session, f"http://127.0.0.1:{running.http_port}"))

    asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def nano(usd: float) -> int:
    return round(usd * 1e9)


def test_day_budget_refuses_with_429_naming_it(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        # $0.0001 / $0.000032 per request: 3 fit (0.000096), the 4th would pass the cap
        for _ in range(3):
            status, _, body = await c.chat("daily", max_tokens=12)
            assert status == 200, body
        status, headers, body = await c.chat("daily", max_tokens=12)
        assert status == 429
        error = body["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
        message = error["message"]
        assert "the day budget (usdPerDay) is $0.0001" in message
        assert "$0.000096 is spent or reserved today" in message
        assert "may cost up to $0.000032" in message
        assert "T00:00:00Z" in message
        assert 1 <= int(headers["Retry-After"]) <= 86_400

    run(check, store_url)


def test_month_budget_is_named_when_it_binds(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        assert (await c.chat("monthly", max_tokens=12))[0] == 200
        status, _, body = await c.chat("monthly", max_tokens=12)
        assert status == 429
        assert "the month budget (usdPerMonth) is $0.00005" in body["error"]["message"]

    run(check, store_url)


def test_worst_case_above_the_cap_is_400_naming_max_tokens(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        # no max_tokens: the reservation assumes 4096 output tokens = $0.008 > $0.0001
        status, _, body = await c.chat("daily")
        assert status == 400
        assert body["error"]["code"] == "exceeds_budget"
        assert body["error"]["param"] == "max_tokens"
        assert "set max_tokens to at most 46" in body["error"]["message"]  # (1e5-8e3)/2e3

    run(check, store_url)


def test_reservation_is_settled_to_the_real_cost(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        # reserves 8 + 40 output tokens = $0.000088, costs $0.000032 once settled
        assert (await c.chat("daily", max_tokens=40))[0] == 200
        spend = await c.spend()
        assert nano(spend["routes"]["daily"]["day"]) == COST_CHEAP
        # so two more of $0.000032 fit (would not if the $0.000088 had stayed)
        assert (await c.chat("daily", max_tokens=12))[0] == 200
        assert (await c.chat("daily", max_tokens=12))[0] == 200
        assert nano((await c.spend())["routes"]["daily"]["day"]) == 3 * COST_CHEAP

    run(check, store_url)


def test_cost_is_priced_from_the_backend_that_answered(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        status, headers, body = await c.chat("fallback", max_tokens=12)
        assert status == 200 and headers["x-kanal-backend"] == "default/dear", body
        usage = body["usage"]
        expected = usage["prompt_tokens"] * 10_000 + usage["completion_tokens"] * 20_000
        assert nano((await c.spend())["routes"]["fallback"]["day"]) == expected

    run(check, store_url)


def test_spend_per_key_namespace_and_route(store_url: str | None) -> None:
    async def check(c: Client) -> None:
        assert (await c.chat("daily", key="sk-one", max_tokens=12))[0] == 200
        assert (await c.chat("daily", key="sk-two", max_tokens=12))[0] == 200
        assert (await c.chat("daily", key="sk-three", max_tokens=12))[0] == 200
        assert (await c.chat("free", key="sk-one", max_tokens=12))[0] == 200
        one = await c.spend("sk-one")
        assert one["object"] == "spend" and one["currency"] == "usd"
        assert one["key"]["id"] == "key:default/k1"
        assert nano(one["key"]["day"]) == nano(one["key"]["month"]) == COST_CHEAP
        assert one["namespace"]["name"] == "default"
        assert nano(one["namespace"]["day"]) == 2 * COST_CHEAP
        assert set(one["routes"]) == {"daily", "monthly", "fallback"}  # not the unbudgeted
        daily = one["routes"]["daily"]
        assert daily["route"] == "default/daily" and daily["usdPerDay"] == 0.0001
        assert daily["usdPerMonth"] is None
        assert nano(daily["day"]) == 3 * COST_CHEAP  # the route as a whole, team-b included
        assert nano(daily["key"]["day"]) == COST_CHEAP
        assert nano(daily["namespace"]["day"]) == 2 * COST_CHEAP
        three = await c.spend("sk-three")
        assert set(three["routes"]) == {"daily"}  # the only budgeted route team-b may use
        assert three["namespace"] == {
            "name": "team-b",
            "day": COST_CHEAP / 1e9,
            "month": COST_CHEAP / 1e9,
        }
        assert len(one["day"]) == 10 and one["day"].startswith(one["month"])

    run(check, store_url)
