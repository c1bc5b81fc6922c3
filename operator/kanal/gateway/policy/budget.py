"""Budgets: US dollars per UTC day and calendar month, exact across gateway replicas.

``LlmRoute.budget`` {usdPerDay, usdPerMonth} caps the route as a whole — every caller of
it, from every namespace it is shared with — because the budget is a field of the route.
Spend is also recorded per caller key and per namespace on each budgeted route, for
``GET /v1/spend`` (routes without a budget are not metered here).

Reserve, then settle (so concurrency never overshoots a cap):

- before the call: reserve the worst case, ``estimated_prompt_tokens`` x the highest
  input price and ``max_output_tokens`` x ``n`` x the highest output price among the route's
  targets (every tier: a fallback may answer). Refused if it would pass a cap: 429 naming
  the budget (day or month), its cap and the spend, ``Retry-After`` until that period
  ends. A request whose worst case alone passes a cap could never be admitted: 400
  naming ``max_tokens``.
- after the call (also on errors, disconnects, stream ends): replace the reservation with
  the real cost, priced from the backend and model that answered and the usage it
  reported (or the gateway's estimate of a stream cut short). A failed call with no usage
  costs nothing; a caller that went away before any answer is charged the estimated
  input at the highest input price (the upstream most likely read the prompt). Settling
  is idempotent per reservation.

Amounts are integer nano-dollars (see ``_budget_store``). Redis unreachable: as for rate
limits — ``redis_fail_open`` admits unchecked, else 503 ``budget_unavailable``; counted in
``redis_failures`` and logged; never per-process counters.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from kanal.api.llmroute import Budget
from kanal.gateway.errors import GatewayError
from kanal.gateway.money import NANO, usd
from kanal.gateway.policy._budget_store import (
    BudgetStore,
    Check,
    MemoryBudgetStore,
    RedisBudgetStore,
    day_text,
    month_text,
)
from kanal.gateway.policy._limits_common import (
    RedisHealth,
    choices,
    new_member,
    reserved_output,
    retry_seconds,
)
from kanal.gateway.policy.base import Call, Caller, Json, Outcome, Policy
from kanal.gateway.stores import REDIS_ERRORS, Stores
from kanal.snapshot import RouteConfig, Snapshot

log = logging.getLogger("kanal.gateway.budget")

HOLD_MARGIN = 3600.0
"""Seconds a reservation outlives the route's timeout before its bookkeeping expires."""

Prices = tuple[float, float]
"""nano-USD per input token, per output token."""


class BudgetPolicy(Policy):
    name = "budget"

    def __init__(self, stores: Stores) -> None:
        super().__init__(stores)
        self.store: BudgetStore = (
            RedisBudgetStore(stores.redis) if stores.redis is not None else MemoryBudgetStore()
        )
        self.health = RedisHealth("budgets", log)
        self._prices: dict[str, Prices] = {}
        self._prices_of: Snapshot | None = None

    @property
    def redis_failures(self) -> int:
        """Times Redis could not be reached (each one admitted or refused per the setting)."""
        return self.health.failures

    def enabled(self, route: RouteConfig) -> bool:
        return route.budget is not None

    # -- request path ---------------------------------------------------------------------

    async def before(self, call: Call) -> Json | None:
        budget = call.route.budget
        if budget is None:
            return None
        price_in, price_out = self._max_prices(call.route)
        output = reserved_output(call)
        amount = round(call.estimated_prompt_tokens * price_in + output * price_out)
        day_cap, month_cap = _nano(budget.usd_per_day), _nano(budget.usd_per_month)
        _check_fits(call, budget, amount, output, price_in, price_out)
        member = new_member(call.request_id)
        try:
            self.health.check()
            check = await self.store.reserve(
                call.route.id,
                member,
                amount,
                day_cap=day_cap,
                month_cap=month_cap,
                hold=call.route.timeout + HOLD_MARGIN,
            )
        except REDIS_ERRORS as exc:
            fail_open = self.stores.settings.redis_fail_open
            self.health.unavailable(exc, fail_open=fail_open, code="budget_unavailable")
            return None
        if not check.admitted:
            raise _refusal(call, budget, check, amount)
        call.state[self.name] = member
        return None

    async def after(self, call: Call, outcome: Outcome) -> None:
        member = call.state.pop(self.name, None)
        if member is None:  # admitted unchecked (fail-open)
            return
        cost = self.cost(call, outcome)
        try:
            self.health.check()
            await self.store.settle(
                call.route.id, member, cost, key=call.caller.id, namespace=call.caller.tenant
            )
        except REDIS_ERRORS as exc:
            self.health.record(exc, fail_open=self.stores.settings.redis_fail_open)

    def cost(self, call: Call, outcome: Outcome) -> int:
        """What the call really cost, in nano-USD (see the module docstring)."""
        usage = outcome.usage
        if usage is None:
            if outcome.error is not None:
                return 0
            return round(call.estimated_prompt_tokens * self._max_prices(call.route)[0])
        price_in, price_out = self._answer_prices(call.route, outcome)
        return round(usage.prompt_tokens * price_in + usage.completion_tokens * price_out)

    # -- prices -----------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        if self.gateway is None:
            return Snapshot()
        snapshot = self.gateway.runtime.snapshot
        if snapshot is not self._prices_of:
            self._prices, self._prices_of = {}, snapshot
        return snapshot

    def _max_prices(self, route: RouteConfig) -> Prices:
        """Highest input and output price among the route's targets (nano-USD per token)."""
        snapshot = self._snapshot()
        prices = self._prices.get(route.id)
        if prices is None:
            price_in = price_out = 0.0
            for tier in route.tiers:
                for target in tier.targets:
                    backend = snapshot.backends.get(target.backend)
                    info = backend.models.get(target.model) if backend else None
                    if info is not None:
                        price_in = max(price_in, info.usd_per_input_token * NANO)
                        price_out = max(price_out, info.usd_per_output_token * NANO)
            prices = self._prices[route.id] = (price_in, price_out)
        return prices

    def _answer_prices(self, route: RouteConfig, outcome: Outcome) -> Prices:
        """Prices of the backend and model that answered; the route's highest if unknown."""
        if outcome.backend is not None and outcome.model is not None:
            backend = self._snapshot().backends.get(outcome.backend)
            info = backend.models.get(outcome.model) if backend else None
            if info is not None:
                return info.usd_per_input_token * NANO, info.usd_per_output_token * NANO
        return self._max_prices(route)

    # -- GET /v1/spend ----------------------------------------------------------------------

    async def spend(self, caller: Caller) -> dict[str, Any]:
        """Current spend of the caller's key and namespace, and of each budgeted route the
        caller can use (route figures include reservations of calls in flight)."""
        routes = [r for r in self._snapshot().models_for(caller.tenant) if r.budget is not None]
        try:
            self.health.check()
            reading = await self.store.read(
                [r.id for r in routes], key=caller.id, namespace=caller.tenant
            )
        except REDIS_ERRORS as exc:
            self.health.record(exc, fail_open=self.stores.settings.redis_fail_open)
            raise GatewayError(
                503,
                "spend cannot be read right now (the gateway's Redis is unreachable)",
                code="budget_unavailable",
                retry_after=1.0,
            ) from None
        by_model: dict[str, Any] = {}
        key_day = key_month = ns_day = ns_month = 0
        for route, row in zip(routes, reading.routes, strict=True):
            budget = route.budget
            assert budget is not None
            by_model[route.model] = {
                "route": route.id,
                "day": usd(row.route_day),
                "month": usd(row.route_month),
                "usdPerDay": budget.usd_per_day,
                "usdPerMonth": budget.usd_per_month,
                "key": {"day": usd(row.key_day), "month": usd(row.key_month)},
                "namespace": {"day": usd(row.namespace_day), "month": usd(row.namespace_month)},
            }
            key_day += row.key_day
            key_month += row.key_month
            ns_day += row.namespace_day
            ns_month += row.namespace_month
        return {
            "object": "spend",
            "currency": "usd",
            "day": day_text(reading.day),
            "month": month_text(reading.month),
            "key": {"id": caller.id, "day": usd(key_day), "month": usd(key_month)},
            "namespace": {"name": caller.tenant, "day": usd(ns_day), "month": usd(ns_month)},
            "routes": by_model,
        }


def _nano(usd: float | None) -> int | None:
    return None if usd is None else round(usd * NANO)


def _money(nano: int) -> str:
    text = f"{nano / NANO:.9f}".rstrip("0").rstrip(".")
    return f"${text}"


def _check_fits(
    call: Call, budget: Budget, amount: int, output: int, price_in: float, price_out: float
) -> None:
    """400 for a request whose worst case alone passes a cap: waiting would not help."""
    caps = [("usdPerDay", budget.usd_per_day), ("usdPerMonth", budget.usd_per_month)]
    name, cap = min(((n, c) for n, c in caps if c is not None), key=lambda nc: nc[1])
    cap_nano = round(cap * NANO)
    if amount <= cap_nano:
        return
    room = (cap_nano - call.estimated_prompt_tokens * price_in) / choices(call)
    hint, param = "shorten the input", "messages" if call.op == "chat" else None
    if output and price_out > 0 and room >= price_out:
        hint, param = f"set max_tokens to at most {int(room // price_out)}", "max_tokens"
    raise GatewayError(
        400,
        f"This request may cost up to {_money(amount)} (~{call.estimated_prompt_tokens} "
        f"input + {output} output tokens at the route's highest prices), more than the "
        f"{name} budget of {_money(cap_nano)} of route {call.route.id}: "
        f"it can never be admitted; {hint}.",
        code="exceeds_budget",
        param=param,
    )


def _refusal(call: Call, budget: Budget, check: Check, amount: int) -> GatewayError:
    if check.exceeded == "month":
        name, cap, spent, period, when = (
            "usdPerMonth",
            budget.usd_per_month,
            check.month_spend,
            "month",
            "this month",
        )
    else:
        name, cap, spent, period, when = (
            "usdPerDay",
            budget.usd_per_day,
            check.day_spend,
            "day",
            "today",
        )
    wait = retry_seconds(check.retry_after)
    # periods end on a whole second (midnight UTC): round away the clocks' milliseconds
    reset = dt.datetime.fromtimestamp(round(time.time() + check.retry_after), dt.UTC)
    return GatewayError(
        429,
        f"Budget exceeded for model {call.route.model} (route {call.route.id}): the {period} "
        f"budget ({name}) is {_money(_nano(cap) or 0)} and {_money(spent)} is spent or "
        f"reserved {when}; this request may cost up to {_money(amount)}. It resets at "
        f"{reset.strftime('%Y-%m-%dT%H:%M:%SZ')} (in {wait}s).",
        code="budget_exceeded",
        retry_after=wait,
    )
