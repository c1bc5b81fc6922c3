"""Sliding-window rate-limit counters: one interface, in memory and in Redis.

A *scope* is one counter: a route plus who shares it (a key, a namespace, or everyone).
Within a scope every admitted request is one *entry* stamped with its admission time and
weighted with its tokens. The window is a true sliding log: an entry counts while
``now < admitted_at + window`` and leaves at that instant, so

- requests in the window = number of entries,
- tokens in the window = sum of their weights (a reservation until settled, then the
  provider-reported usage),
- ``Retry-After`` = when enough of the oldest entries have left for the refused request
  to fit (for requests: when the oldest one leaves).

``acquire`` checks both limits and, only if both pass, adds the entry — atomically (one Lua
script on Redis; no await between check and add in memory). ``settle`` replaces an entry's
reserved weight by the real one, once: a second settle of the same reservation, or a settle
after the entry left the window, changes nothing.

Redis layout, all keys of a scope under one hash tag (one Cluster slot)::

    kanal:rl:{<scope>}:z   ZSET  member -> admission time (ms, Redis server TIME)
    kanal:rl:{<scope>}:w   HASH  member -> "r<tokens>" (reserved) | "s<tokens>" (settled);
                                 "#" -> sum of the weights of the entries in the window

Members are reservation ids (``request_id|unique``). Weights are stored only when the
scope has a token limit. Both keys get ``PEXPIRE window + 1 s`` on every admission, so an
idle scope disappears one window after its last request; expired entries are removed (and
their weight subtracted from ``#``) by the next ``acquire``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import redis.asyncio as aioredis

WINDOW_SECONDS = 60.0
SWEEP_EVERY = 1024
"""Memory store: drop idle scopes every this many acquisitions."""

Exceeded = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict of one ``acquire``."""

    admitted: bool
    exceeded: Exceeded | None
    """Which limit refused it (requests are checked first)."""
    requests: int
    """Requests counted in the window (including this one when admitted)."""
    tokens: int
    """Tokens counted in the window (including this reservation when admitted)."""
    reset: float
    """Seconds until the oldest counted entry leaves the window (0 when it is empty)."""
    retry_after: float
    """When refused: seconds until the refused request would fit."""


class LimitStore(Protocol):
    window: float

    async def acquire(
        self, scope: str, member: str, *, rpm: int, tpm: int, tokens: int
    ) -> Admission:
        """Admit and count ``member`` (1 request, ``tokens`` tokens) if it fits both
        limits; ``rpm``/``tpm`` of 0 mean "not limited". Weights are kept only if tpm."""
        ...

    async def settle(self, scope: str, member: str, tokens: int) -> bool:
        """Set the reservation's weight to ``tokens``; False if it was settled already
        or has left the window (then nothing changes)."""
        ...


# -- memory -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Weight:
    tokens: int
    settled: bool = False


@dataclass(slots=True)
class _Window:
    entries: deque[tuple[float, str]] = field(default_factory=deque)
    weights: dict[str, _Weight] = field(default_factory=dict)
    used: int = 0

    def evict(self, cutoff: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= cutoff:
            _, member = entries.popleft()
            weight = self.weights.pop(member, None)
            if weight is not None:
                self.used -= weight.tokens


class MemoryLimitStore:
    """This process's counters (``kanal up`` without Redis); same semantics as Redis."""

    def __init__(
        self, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self._scopes: dict[str, _Window] = {}
        self._ops = 0

    async def acquire(
        self, scope: str, member: str, *, rpm: int, tpm: int, tokens: int
    ) -> Admission:
        now = self.clock()
        self._ops += 1
        if self._ops % SWEEP_EVERY == 0:
            self.sweep(now)
        win = self._scopes.get(scope)
        if win is None:
            win = self._scopes[scope] = _Window()
        win.evict(now - self.window)
        count, used = len(win.entries), win.used
        reset = win.entries[0][0] + self.window - now if win.entries else 0.0
        if rpm and count >= rpm:
            return Admission(False, "requests", count, used, reset, reset)
        if tpm and used + tokens > tpm:
            need, freed, retry = used + tokens - tpm, 0, self.window
            for at, other in win.entries:
                weight = win.weights.get(other)
                freed += weight.tokens if weight is not None else 0
                if freed >= need:
                    retry = at + self.window - now
                    break
            return Admission(False, "tokens", count, used, reset, retry)
        win.entries.append((now, member))
        if tpm:
            win.weights[member] = _Weight(tokens)
            win.used += tokens
        return Admission(True, None, count + 1, win.used, reset or self.window, 0.0)

    async def settle(self, scope: str, member: str, tokens: int) -> bool:
        win = self._scopes.get(scope)
        if win is None:
            return False
        win.evict(self.clock() - self.window)
        weight = win.weights.get(member)
        if weight is None or weight.settled:
            return False
        win.used += tokens - weight.tokens
        weight.tokens, weight.settled = tokens, True
        return True

    def sweep(self, now: float | None = None) -> None:
        """Forget scopes with nothing in the window (bounded memory)."""
        cutoff = (self.clock() if now is None else now) - self.window
        for scope in list(self._scopes):
            win = self._scopes[scope]
            win.evict(cutoff)
            if not win.entries:
                del self._scopes[scope]

    def __len__(self) -> int:
        return len(self._scopes)


# -- redis --------------------------------------------------------------------------------

ACQUIRE_LUA = """
local z, w = KEYS[1], KEYS[2]
local window = tonumber(ARGV[1])
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local member, tokens = ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[6])
local function num(x) return string.format('%.0f', x) end

-- entries that left the window: drop them and their weights
local cutoff = num(now - window)
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
  local freed = 0
  for i = 1, #gone do
    local v = redis.call('HGET', w, gone[i])
    if v then
      freed = freed + tonumber(string.sub(v, 2))
      redis.call('HDEL', w, gone[i])
    end
  end
  if freed ~= 0 then redis.call('HINCRBY', w, '#', num(-freed)) end
end

local count = redis.call('ZCARD', z)
local used = tonumber(redis.call('HGET', w, '#') or '0')
local reset = 0
local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
if #first > 0 then reset = tonumber(first[2]) + window - now end

if rpm > 0 and count >= rpm then
  return {0, 1, count, used, reset, reset}
end
if tpm > 0 and used + tokens > tpm then
  -- walk from the oldest entry until enough tokens would be freed
  local need, freed, retry, found, start = used + tokens - tpm, 0, window, false, 0
  while not found do
    local batch = redis.call('ZRANGE', z, start, start + 127, 'WITHSCORES')
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      local v = redis.call('HGET', w, batch[i])
      if v then freed = freed + tonumber(string.sub(v, 2)) end
      if freed >= need then
        retry = tonumber(batch[i + 1]) + window - now
        found = true
        break
      end
    end
    start = start + 128
  end
  return {0, 2, count, used, reset, retry}
end

redis.call('ZADD', z, num(now), member)
if tpm > 0 then
  redis.call('HSET', w, member, 'r' .. ARGV[5])
  used = redis.call('HINCRBY', w, '#', ARGV[5])
end
if count == 0 then reset = window end
local ttl = num(window + 1000)
redis.call('PEXPIRE', z, ttl)
redis.call('PEXPIRE', w, ttl)
return {1, 0, count + 1, used, reset, 0}
"""

SETTLE_LUA = """
local z, w, member = KEYS[1], KEYS[2], ARGV[1]
local at = redis.call('ZSCORE', z, member)
if not at then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
if tonumber(at) <= now - tonumber(ARGV[3]) then return 0 end  -- left the window
local v = redis.call('HGET', w, member)
if (not v) or string.sub(v, 1, 1) == 's' then return 0 end
local delta = tonumber(ARGV[2]) - tonumber(string.sub(v, 2))
redis.call('HSET', w, member, 's' .. ARGV[2])
if delta ~= 0 then redis.call('HINCRBY', w, '#', string.format('%.0f', delta)) end
return 1
"""

_EXCEEDED: tuple[Exceeded | None, ...] = (None, "requests", "tokens")


def scope_keys(scope: str) -> tuple[str, str]:
    """The ZSET and HASH of a scope, hash-tagged into one Cluster slot."""
    return f"kanal:rl:{{{scope}}}:z", f"kanal:rl:{{{scope}}}:w"


class RedisLimitStore:
    """Counters shared by every gateway on one Redis; time is the Redis server's."""

    def __init__(
        self, client: aioredis.Redis, window: float = WINDOW_SECONDS, shift: float = 0.0
    ) -> None:
        self.client = client
        self.window = window
        self._window_ms = str(round(window * 1000))
        self._shift_ms = str(round(shift * 1000))
        """Added to the server's clock: lets tests look into the future without waiting."""
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._settle = client.register_script(SETTLE_LUA)

    async def acquire(
        self, scope: str, member: str, *, rpm: int, tpm: int, tokens: int
    ) -> Admission:
        z, w = scope_keys(scope)
        args = (self._window_ms, rpm, tpm, member, tokens, self._shift_ms)
        ok, which, count, used, reset, retry = await self._acquire(keys=(z, w), args=args)
        return Admission(
            bool(ok), _EXCEEDED[which], int(count), int(used), reset / 1000, retry / 1000
        )

    async def settle(self, scope: str, member: str, tokens: int) -> bool:
        args = (member, tokens, self._window_ms, self._shift_ms)
        return bool(await self._settle(keys=scope_keys(scope), args=args))
