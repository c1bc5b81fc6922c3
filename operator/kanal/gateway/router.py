"""Choosing upstreams: weighted within a tier, fallback across tiers, retries, cooldowns.

The router knows nothing of HTTP or gRPC. It runs an *attempt* — a coroutine that calls
one backend — until one succeeds, following the route's policy, and reports which
backend answered and how long the upstream took.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from kanal.gateway.errors import GatewayError, from_upstream
from kanal.gateway.providers.base import FailureKind, UpstreamError
from kanal.gateway.runtime import BackendState, Runtime
from kanal.gateway.spans import (
    SpanKind,
    Tracer,
    current_span,
    genai_operation,
    genai_provider,
    recording,
)
from kanal.snapshot import RouteConfig, Target, Tier

T = TypeVar("T")

Attempt = Callable[[BackendState, Target, float], Awaitable[T]]
"""Calls one backend for one target with the seconds left; raises UpstreamError."""

# A failure counts under this retry.on name; protocol and credential trouble retry as 5xx.
_RETRY_NAME = {
    FailureKind.SERVER: "5xx",
    FailureKind.PROTOCOL: "5xx",
    FailureKind.AUTH: "5xx",
    FailureKind.TIMEOUT: "timeout",
    FailureKind.RATE_LIMITED: "rate-limited",
    FailureKind.CONNECT: "connect-error",
}


class AttemptRecord(NamedTuple):
    """One upstream attempt, as routing saw it."""

    backend: str
    outcome: str
    """``ok`` or the FailureKind value (5xx, timeout, rate-limited, connect-error, ...)."""
    seconds: float


@dataclass(slots=True)
class Trace:
    """What routing did for one request."""

    backend: str = ""
    model: str = ""
    attempts: int = 0
    upstream_seconds: float = 0.0
    attempt_log: list[AttemptRecord] = field(default_factory=list)
    """Every attempt in order (retries and fallbacks included), for metrics."""
    release: Callable[[], None] | None = None
    """For streams: frees the backend's concurrency slot once the stream ends."""

    def attempted(self, backend: str, outcome: str, seconds: float) -> None:
        """Account one upstream attempt: its time and its line in the log."""
        self.upstream_seconds += seconds
        self.attempt_log.append(AttemptRecord(backend, outcome, seconds))

    def done(self) -> None:
        if self.release is not None:
            self.release()
            self.release = None


def _retryable(err: UpstreamError, route: RouteConfig) -> bool:
    name = _RETRY_NAME.get(err.kind)
    return name is not None and name in route.retry.on


def _pick(
    tier: Tier,
    backends: dict[str, BackendState],
    tried: set[int],
    now: float,
    rng: random.Random,
) -> int | None:
    """Index of the next target: untried before tried, not cooling down, not saturated,
    weighted by ``weight`` (zero weights only when nothing else is left)."""
    ready = [
        i
        for i, t in enumerate(tier.targets)
        if (state := backends.get(t.backend)) is not None and state.cooldown_until <= now
    ]
    if not ready:
        return None
    fresh = [i for i in ready if i not in tried] or ready
    free = [
        i
        for i in fresh
        if (slots := backends[tier.targets[i].backend].slots) is None or not slots.locked()
    ] or fresh
    weighted = [i for i in free if tier.targets[i].weight > 0] or free
    if len(weighted) == 1:
        return weighted[0]
    weights = [tier.targets[i].weight or 1 for i in weighted]
    return rng.choices(weighted, weights=weights)[0]


def _attempt_attributes(
    state: BackendState,
    target: Target,
    operation: str,
    number: int,
    tier_index: int,
    tier: Tier,
    retries: int,
) -> dict[str, str | int | bool]:
    """The GenAI client-span attributes of one upstream attempt, plus kanal's own."""
    provider = genai_provider(state.config.provider)
    attributes: dict[str, str | int | bool] = {
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": target.model,
        "kanal.backend": target.backend,
        "kanal.attempt": number,
        "kanal.tier": tier_index,
        "kanal.priority": tier.priority,
        "kanal.retry": retries > 0,
        "kanal.fallback": tier_index > 0,
    }
    if operation:
        attributes["gen_ai.operation.name"] = genai_operation(operation)
    return attributes


def _earliest_recovery(tier: Tier, backends: dict[str, BackendState]) -> float | None:
    ends = [backends[t.backend].cooldown_until for t in tier.targets if t.backend in backends]
    return min(ends) if ends else None


class Router:
    def __init__(self, runtime: Runtime, rng: random.Random | None = None) -> None:
        self.runtime = runtime
        self.rng = rng or random.Random()

    async def run(
        self,
        route: RouteConfig,
        attempt: Attempt[T],
        trace: Trace,
        *,
        stream: bool = False,
        operation: str = "",
    ) -> T:
        """Run ``attempt`` under the route's policy; GatewayError when nothing answered.

        With ``stream`` the backend's concurrency slot stays taken after success until
        ``trace.done()`` (the stream's end). ``operation`` (chat, completion, embeddings)
        names the attempt spans when tracing is on."""
        tracer = recording(self.runtime.tracer)
        if tracer is None:
            return await self._run(route, attempt, trace, stream, None, operation)
        with current_span(tracer, "kanal.routing", attributes={"kanal.route": route.id}) as span:
            try:
                return await self._run(route, attempt, trace, stream, tracer, operation)
            finally:
                span.set_attribute("kanal.attempts", trace.attempts)
                if trace.backend:
                    span.set_attribute("kanal.backend", trace.backend)

    async def _run(
        self,
        route: RouteConfig,
        attempt: Attempt[T],
        trace: Trace,
        stream: bool,
        tracer: Tracer | None,
        operation: str,
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.timeout
        settings = self.runtime.settings
        last: UpstreamError | None = None
        for tier_index, tier in enumerate(route.tiers):
            last_tier = tier_index == len(route.tiers) - 1
            tried: set[int] = set()
            budget = route.retry.attempts + 1
            retries = 0
            while budget > 0:
                backends = self.runtime.backends  # re-read: a new snapshot may have arrived
                now = loop.time()
                if now >= deadline:
                    raise GatewayError(
                        504,
                        f"model {route.model}: request deadline exceeded",
                        code="deadline_exceeded",
                    )
                index = _pick(tier, backends, tried, now, self.rng)
                if index is None:
                    recovery = _earliest_recovery(tier, backends)
                    if last_tier and recovery is not None and recovery < deadline:
                        # every backend is cooling down: wait for the first rather than fail
                        await asyncio.sleep(max(0.0, recovery - now))
                        continue
                    break  # fall back to the next tier
                target = tier.targets[index]
                state = backends[target.backend]
                if retries:
                    delay = route.retry.backoff * (2 ** (retries - 1)) * self.rng.uniform(0.5, 1.5)
                    await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                trace.attempts += 1
                # perf_counter, not loop.time(): uvloop's clock is the iteration's cached
                # millisecond, too coarse for upstream time (and so gateway overhead)
                started = time.perf_counter()
                try:
                    slot = self._with_slot(state, target, attempt, deadline, trace, stream)
                    if tracer is None:
                        result = await slot
                    else:
                        with current_span(
                            tracer,
                            f"{operation} {target.model}".strip(),
                            kind=SpanKind.CLIENT,
                            attributes=_attempt_attributes(
                                state, target, operation, trace.attempts, tier_index, tier, retries
                            ),
                        ) as span:
                            try:
                                result = await slot
                            except UpstreamError as err:
                                span.set_attribute("kanal.attempt.outcome", err.kind.value)
                                raise
                            span.set_attribute("kanal.attempt.outcome", "ok")
                except UpstreamError as err:
                    trace.attempted(target.backend, err.kind.value, time.perf_counter() - started)
                    state.record_failure(err, loop.time(), settings)
                    last = err
                    if not _retryable(err, route):
                        raise from_upstream(err, model=route.model) from None
                    tried.add(index)
                    budget -= 1
                    retries += 1
                    continue
                trace.attempted(target.backend, "ok", time.perf_counter() - started)
                state.record_success()
                trace.backend, trace.model = target.backend, target.model
                return result
        if last is not None:
            raise from_upstream(last, model=route.model)
        raise GatewayError(
            503,
            f"model {route.model}: every backend is cooling down after failures; retry later",
            code="backends_cooling_down",
            retry_after=self._retry_after(route),
        )

    async def _with_slot(
        self,
        state: BackendState,
        target: Target,
        attempt: Attempt[T],
        deadline: float,
        trace: Trace,
        keep: bool,
    ) -> T:
        remaining = deadline - asyncio.get_running_loop().time()
        timeout = min(remaining, state.config.request_timeout)
        if state.slots is None:
            return await attempt(state, target, timeout)
        try:
            await asyncio.wait_for(state.slots.acquire(), timeout)
        except TimeoutError:
            raise UpstreamError(
                FailureKind.TIMEOUT,
                f"backend {state.config.id}: no free slot within the deadline "
                f"(maxConcurrency {state.config.max_concurrency})",
            ) from None
        try:
            result = await attempt(state, target, timeout)
        except BaseException:
            state.slots.release()
            raise
        if keep:
            trace.release = state.slots.release
        else:
            state.slots.release()
        return result

    def _retry_after(self, route: RouteConfig) -> float:
        now = asyncio.get_running_loop().time()
        ends = [
            self.runtime.backends[t.backend].cooldown_until - now
            for tier in route.tiers
            for t in tier.targets
            if t.backend in self.runtime.backends
        ]
        return max(1.0, min(ends)) if ends else 1.0
