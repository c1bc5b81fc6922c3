"""Pure pieces of the budget policy: prices over the route's targets, what a call costs,
the never-admissible 400, calendar periods, and spend's JSON shape (memory store)."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from gwkit import snapshot_from_yaml
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy._budget_store import MemoryBudgetStore, day_text, month_text, periods
from kanal.gateway.policy.base import Call, Caller, Outcome, Usage
from kanal.gateway.policy.budget import BudgetPolicy
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores

YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: cheap}
spec:
  provider: mock
  models:
    - {name: small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 4}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: dear}
spec:
  provider: mock
  models:
    - {name: large, contextWindow: 8192, pricing: {inputPerMTok: 3, outputPerMTok: 2}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat}
spec:
  backends:
    - {backendRef: {name: cheap}, model: small, priority: 0}
    - {backendRef: {name: dear}, model: large, priority: 1}
  budget: {usdPerDay: 0.01, usdPerMonth: 0.5}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: plain}
spec:
  backends: [{backendRef: {name: cheap}, model: small}]
"""
SNAPSHOT = snapshot_from_yaml(YAML)
ROUTE = SNAPSHOT.routes["default/chat"]


def policy() -> BudgetPolicy:
    p = BudgetPolicy(Stores(GatewaySettings()))
    p.bind(SimpleNamespace(runtime=SimpleNamespace(snapshot=SNAPSHOT)))  # type: ignore[arg-type]
    return p


def call(prompt: int = 100, output: int = 50, op: Any = "chat") -> Call:
    return Call(
        op=op,
        caller=Caller("default", key="k1"),
        route=ROUTE,
        body={},
        request_id="req-1",
        estimated_prompt_tokens=prompt,
        max_output_tokens=output,
    )


def test_policy_is_only_in_chains_of_routes_with_a_budget() -> None:
    p = policy()
    assert p.enabled(ROUTE) and not p.enabled(SNAPSHOT.routes["default/plain"])


def test_reservations_use_the_highest_prices_of_every_tier() -> None:
    async def main() -> None:
        p = policy()
        store = p.store
        assert isinstance(store, MemoryBudgetStore)
        c = call(prompt=100, output=50)
        await p.before(c)
        # 100 x $3/M (dear input) + 50 x $4/M (cheap output) = 300000 + 200000 nano-USD
        reading = await store.read([ROUTE.id], key="key:default/k1", namespace="default")
        assert reading.routes[0].route_day == 500_000
        embed = call(prompt=100, output=4096, op="embeddings")
        await p.before(embed)  # embeddings produce no output tokens
        reading = await store.read([ROUTE.id], key="key:default/k1", namespace="default")
        assert reading.routes[0].route_day == 800_000

    asyncio.run(main())


def test_cost_is_priced_from_the_answer() -> None:
    p = policy()
    c = call(prompt=100, output=50)
    cheap = Outcome(usage=Usage(10, 20), backend="default/cheap", model="small")
    assert p.cost(c, cheap) == 10 * 1000 + 20 * 4000
    dear = Outcome(usage=Usage(10, 20), backend="default/dear", model="large")
    assert p.cost(c, dear) == 10 * 3000 + 20 * 2000
    unknown = Outcome(usage=Usage(10, 20), backend="default/gone", model="x")
    assert p.cost(c, unknown) == 10 * 3000 + 20 * 4000  # the route's highest prices
    assert p.cost(c, Outcome(error=GatewayError(502, "failed"))) == 0
    assert p.cost(c, Outcome()) == 100 * 3000  # left before any answer: the input


def test_a_request_whose_worst_case_passes_the_cap_is_400() -> None:
    async def main() -> None:
        p = policy()
        with pytest.raises(GatewayError) as info:
            await p.before(call(prompt=100, output=4096))  # 0.0003 + 0.016384 > 0.01
        err = info.value
        assert err.status == 400 and err.code == "exceeds_budget" and err.param == "max_tokens"
        assert "usdPerDay budget of $0.01" in err.message
        assert "set max_tokens to at most 2425" in err.message  # (1e7 - 3e5) / 4000

    asyncio.run(main())


def test_day_refusal_names_the_budget_and_waits_for_midnight() -> None:
    async def main() -> None:
        p = policy()
        noon = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC).timestamp()
        p.store = MemoryBudgetStore(clock=lambda: noon)
        for _ in range(20):  # $0.0005 each: 20 fill the $0.01 day
            await p.before(call())
        with pytest.raises(GatewayError) as info:
            await p.before(call())
        err = info.value
        assert err.status == 429 and err.code == "budget_exceeded"
        assert err.retry_after == 12 * 3600
        assert "the day budget (usdPerDay) is $0.01 and $0.01 is spent or reserved today" in (
            err.message
        )

    asyncio.run(main())


@pytest.mark.parametrize(
    ("moment", "day", "month", "month_end"),
    [
        ("2024-02-29T23:59:59.999", "2024-02-29", "2024-02", "2024-03-01"),
        ("2024-12-31T00:00:00", "2024-12-31", "2024-12", "2025-01-01"),
        ("2025-01-01T00:00:00", "2025-01-01", "2025-01", "2025-02-01"),
        ("2100-02-28T12:00:00", "2100-02-28", "2100-02", "2100-03-01"),
    ],
)
def test_periods_are_utc_days_and_calendar_months(
    moment: str, day: str, month: str, month_end: str
) -> None:
    at = dt.datetime.fromisoformat(moment).replace(tzinfo=dt.UTC)
    ms = round(at.timestamp() * 1000)
    day_no, month_id, day_end, end = periods(ms)
    assert (day_text(day_no), month_text(month_id)) == (day, month)
    assert day_end == (day_no + 1) * 86_400_000
    end_date = dt.datetime.fromtimestamp(end / 1000, dt.UTC)
    assert end_date.date().isoformat() == month_end and end_date.time() == dt.time()


def test_spend_json_for_a_caller_without_budgeted_routes() -> None:
    async def main() -> None:
        p = policy()
        out = await p.spend(Caller("team-z", key="k9"))
        assert out["object"] == "spend" and out["routes"] == {}
        assert out["key"] == {"id": "key:team-z/k9", "day": 0.0, "month": 0.0}
        assert out["namespace"] == {"name": "team-z", "day": 0.0, "month": 0.0}

    asyncio.run(main())
