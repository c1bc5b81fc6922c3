"""What the rate-limit and budget policies share: Redis failure handling, reservation ids,
response-header durations.

Redis unreachable is never a silent switch to per-process counters: the policy either
admits without checking (``redis_fail_open``) or refuses with 503, and every failure is
counted (``failures``) and logged (at most one warning per ``LOG_EVERY`` seconds, with the
number of failures since the last one). After a failure Redis is not asked again for
``BREAKER_SECONDS`` (those calls count as failures too).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from kanal.gateway.errors import GatewayError

if TYPE_CHECKING:
    from kanal.gateway.policy.base import Call


LOG_EVERY = 10.0
"""Seconds between two warnings about Redis being unreachable (per policy)."""

BREAKER_SECONDS = 1.0
"""After a failure, calls skip Redis for this long (answered as if it had failed at once):
a Redis that hangs would otherwise cost every request ``redis_timeout`` per policy."""

_PROCESS = os.urandom(4).hex()
_COUNTER = itertools.count(1)


def new_member(request_id: str) -> str:
    """A reservation id: the request id plus a per-process unique suffix.

    Settling is idempotent per reservation. The suffix keeps two calls that carry the same
    (caller-chosen) ``x-request-id`` from collapsing into one counted entry, which would let
    a caller slip past a limit by reusing an id.
    """
    return f"{request_id}|{_PROCESS}{next(_COUNTER):x}"


def choices(call: Call) -> int:
    """How many answers the call asks for (OpenAI's ``n``; 1 unless a sane count)."""
    n = call.body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def reserved_output(call: Call) -> int:
    """Output tokens a reservation assumes: ``max_output_tokens`` per choice, times ``n``
    (none for embeddings)."""
    return 0 if call.op == "embeddings" else call.max_output_tokens * choices(call)


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``0s``, ``250ms``,
    ``12.5s``, ``1m0s``. Rounded up to the millisecond, so a client never retries early."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def retry_seconds(seconds: float) -> int:
    """Whole seconds for ``Retry-After``, rounded up (never early, at least 1)."""
    return max(1, math.ceil(seconds - 1e-6))


class BreakerOpen(RedisError):
    """Raised instead of asking Redis shortly after it failed."""


class RedisHealth:
    """Counts and logs failures to reach Redis for one policy; a short circuit breaker."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.failures = 0
        self._unlogged = 0
        self._last_log = -math.inf
        self._down_until = -math.inf

    def check(self) -> None:
        """Raise BreakerOpen shortly after a failure: don't ask Redis now."""
        if time.monotonic() < self._down_until:
            raise BreakerOpen(f"not asked: Redis failed less than {BREAKER_SECONDS:g}s ago")

    def record(self, exc: BaseException, *, fail_open: bool) -> None:
        """One failed Redis call (or one skipped by the breaker)."""
        self.failures += 1
        self._unlogged += 1
        if isinstance(exc, BreakerOpen):
            return
        now = time.monotonic()
        self._down_until = now + BREAKER_SECONDS
        if now - self._last_log < LOG_EVERY:
            return
        self.log.warning(
            "Redis unreachable for %s (%d failure(s) since last report, %d in all): %s: %s; %s",
            self.what,
            self._unlogged,
            self.failures,
            type(exc).__name__,
            exc,
            "admitting requests unchecked (redis_fail_open)"
            if fail_open
            else "refusing requests with 503",
        )
        self._unlogged = 0
        self._last_log = now

    def unavailable(self, exc: BaseException, *, fail_open: bool, code: str) -> None:
        """A check that could not ask Redis: recorded, then admitted unchecked
        (``fail_open``) or refused with 503 ``code``."""
        self.record(exc, fail_open=fail_open)
        if fail_open:
            return
        raise GatewayError(
            503,
            f"{self.what} cannot be checked right now (the gateway's Redis is unreachable); "
            "try again shortly",
            code=code,
            retry_after=1.0,
        )
