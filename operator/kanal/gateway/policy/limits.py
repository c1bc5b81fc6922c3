"""Rate limits: requests and tokens per minute, exact across gateway replicas.

``LlmRoute.rateLimit`` {requestsPerMinute, tokensPerMinute, per: key|namespace|route}.
One counter ("scope") per route and, with ``per: key``, per caller identity
(``Caller.id``: API key or ServiceAccount), with ``per: namespace`` per caller namespace,
with ``per: route`` one for everybody. The window slides over the last 60 seconds (see
``_limits_store``).

Before the call, one atomic check-and-reserve: the request counts 1 and reserves
``estimated_prompt_tokens + max_output_tokens x n`` tokens (no output for embeddings).
After the call (also on errors, client disconnects and stream ends) the reservation is
settled, once, to:

- the usage the provider reported (or the gateway's estimate of a stream cut short);
- 0 tokens when the call failed with no usage (the upstream refused or never answered);
  the request itself stays counted — it was admitted and used a slot;
- the prompt estimate when the caller went away before any answer (the upstream most
  likely read the prompt).

Tokens count at admission time: a settled entry keeps its place in the window, and a
call that lasts longer than the window settles into nothing (its entry has left).

Refusals: 429 with ``Retry-After`` (when the refused request would fit) and OpenAI's
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers, which are also sent on
admitted requests. A request that could never fit (its reservation alone exceeds
tokensPerMinute) gets 400 naming ``max_tokens`` instead of a 429 that retrying can't cure.

Redis unreachable: ``redis_fail_open`` admits unchecked, else 503 ``limits_unavailable``;
either way counted in ``redis_failures`` and logged. Never per-process counters.
"""

from __future__ import annotations

import logging
import math

from kanal.api.llmroute import RateLimit
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy._limits_common import (
    RedisHealth,
    choices,
    duration,
    new_member,
    reserved_output,
    retry_seconds,
)
from kanal.gateway.policy._limits_store import (
    Admission,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
)
from kanal.gateway.policy.base import Call, Json, Outcome, Policy
from kanal.gateway.stores import REDIS_ERRORS, Stores
from kanal.snapshot import RouteConfig

log = logging.getLogger("kanal.gateway.limits")


class LimitsPolicy(Policy):
    name = "limits"

    def __init__(self, stores: Stores) -> None:
        super().__init__(stores)
        self.store: LimitStore = (
            RedisLimitStore(stores.redis) if stores.redis is not None else MemoryLimitStore()
        )
        self.health = RedisHealth("rate limits", log)

    @property
    def redis_failures(self) -> int:
        """Times Redis could not be reached (each one admitted or refused per the setting)."""
        return self.health.failures

    def enabled(self, route: RouteConfig) -> bool:
        return route.rate_limit is not None

    async def before(self, call: Call) -> Json | None:
        limit = call.route.rate_limit
        if limit is None:
            return None
        rpm = limit.requests_per_minute or 0
        tpm = limit.tokens_per_minute or 0
        tokens = 0
        if tpm:
            output = reserved_output(call)
            tokens = call.estimated_prompt_tokens + output
            if tokens > tpm:
                raise _never_fits(call, limit, tokens, output)
        scope = _scope(call, limit)
        member = new_member(call.request_id)
        try:
            self.health.check()
            verdict = await self.store.acquire(scope, member, rpm=rpm, tpm=tpm, tokens=tokens)
        except REDIS_ERRORS as exc:
            fail_open = self.stores.settings.redis_fail_open
            self.health.unavailable(exc, fail_open=fail_open, code="limits_unavailable")
            return None
        _headers(call.headers, rpm, tpm, verdict)
        if not verdict.admitted:
            raise _refusal(call, limit, verdict, tokens)
        if tpm:
            call.state[self.name] = (scope, member, tokens)
        return None

    async def after(self, call: Call, outcome: Outcome) -> None:
        reservation = call.state.pop(self.name, None)
        if reservation is None:  # no token limit, or admitted unchecked (fail-open)
            return
        scope, member, reserved = reservation
        tokens = settled_tokens(call, outcome)
        if tokens == reserved:  # nothing to correct: spare the round trip
            return
        try:
            self.health.check()
            await self.store.settle(scope, member, tokens)
        except REDIS_ERRORS as exc:
            self.health.record(exc, fail_open=self.stores.settings.redis_fail_open)


def settled_tokens(call: Call, outcome: Outcome) -> int:
    """What a call really used, for settling its reservation (see the module docstring)."""
    if outcome.usage is not None:
        return outcome.usage.total_tokens
    if outcome.error is not None:
        return 0
    return call.estimated_prompt_tokens


def _scope(call: Call, limit: RateLimit) -> str:
    route = call.route.id
    if limit.per == "key":
        return f"{route}|key|{call.caller.id}"
    if limit.per == "namespace":
        return f"{route}|namespace|{call.caller.tenant}"
    return f"{route}|route|*"


def _who(call: Call, limit: RateLimit) -> str:
    if limit.per == "key":
        return f"per key {call.caller.id}"
    if limit.per == "namespace":
        return f"per namespace {call.caller.tenant}"
    return "for the whole route"


def _headers(headers: dict[str, str], rpm: int, tpm: int, verdict: Admission) -> None:
    if rpm:
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, rpm - verdict.requests))
        headers["x-ratelimit-reset-requests"] = duration(verdict.reset)
    if tpm:
        reset = verdict.retry_after if verdict.exceeded == "tokens" else verdict.reset
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, tpm - verdict.tokens))
        headers["x-ratelimit-reset-tokens"] = duration(reset)
    if not verdict.admitted:
        headers["retry-after-ms"] = str(max(1, math.ceil(verdict.retry_after * 1000)))


def _refusal(call: Call, limit: RateLimit, verdict: Admission, tokens: int) -> GatewayError:
    wait = retry_seconds(verdict.retry_after)
    if verdict.exceeded == "requests":
        what = f"{limit.requests_per_minute} requests per minute"
        used = f"{verdict.requests} requests in the last minute"
    else:
        what = f"{limit.tokens_per_minute} tokens per minute"
        used = f"{verdict.tokens} tokens counted in the last minute"
        used += f", this request reserves {tokens}"
    return GatewayError(
        429,
        f"Rate limit reached for model {call.route.model} (route {call.route.id}): "
        f"{what} {_who(call, limit)} ({used}). Retry in {wait}s.",
        code="rate_limit_exceeded",
        retry_after=wait,
    )


def _never_fits(call: Call, limit: RateLimit, tokens: int, output: int) -> GatewayError:
    room = ((limit.tokens_per_minute or 0) - call.estimated_prompt_tokens) // choices(call)
    if output and room > 0:
        hint = f"set max_tokens to at most {room}"
        param: str | None = "max_tokens"
    else:
        hint = "shorten the input"
        param = "messages" if call.op == "chat" else None
    return GatewayError(
        400,
        f"This request needs up to {tokens} tokens (~{call.estimated_prompt_tokens} input "
        f"+ {output} output), more than the {limit.tokens_per_minute} tokens per minute "
        f"that route {call.route.id} admits {_who(call, limit)}: it can never be admitted; "
        f"{hint}.",
        code="exceeds_rate_limit",
        param=param,
    )
