"""Budget counters: spend per UTC day and calendar month, one interface in memory and Redis.

Money is counted in integer nano-dollars (1e-9 USD): exact sums, no float drift, and room
for about 9 million dollars per period in Lua's doubles (2**53 nano-USD).

A route's *budget hash* holds the current period ids and what they have spent, including
the reservations of calls still in flight; a period that has ended is reset on the next
access (``did``/``mid`` no longer match the clock)::

    kanal:bg:{<route>}                HASH  did (day number since 1970-01-01 UTC), d (nano-USD),
                                            mid (year*12 + month-1), m (nano-USD)
    kanal:bg:{<route>}:r:<member>     STRING "<amount>:<did>:<mid>"  one reservation in flight
    kanal:bg:{<route>}:k:<caller id>  HASH  same fields: settled spend of one key on the route
    kanal:bg:{<route>}:n:<namespace>  HASH  same fields: settled spend of one namespace

All keys of a route share the hash tag ``{<route>}`` (one Cluster slot), so reserve and
settle are single atomic scripts. Time is the Redis server's (``TIME``), so every gateway
agrees when a day or month ends.

- ``reserve``: roll periods, refuse if ``spend + amount`` would pass a cap (month checked
  first: it is the one that binds longer), else add ``amount`` to both periods and store
  the reservation (expires after ``hold`` seconds: a gateway that died mid-call leaves
  its reservation charged — the safe side — and its bookkeeping key disappears).
- ``settle``: take the reservation (GET + DEL: only the first settle finds it), move each
  period it was charged to by ``cost - amount`` (if that period is still current), and add
  ``cost`` to the key's and namespace's hashes.

TTLs: budget, key and namespace hashes expire one day after the current month ends
(refreshed on every write), reservations after ``hold``.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import redis.asyncio as aioredis

DAY_MS = 86_400_000
SWEEP_EVERY = 1024

Period = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class Check:
    """The verdict of one ``reserve``."""

    admitted: bool
    exceeded: Period | None
    day_spend: int
    """nano-USD spent (and reserved) today, including this reservation when admitted."""
    month_spend: int
    retry_after: float
    """When refused: seconds until the exceeded period ends."""
    day: int
    """Current day number (days since 1970-01-01 UTC)."""
    month: int
    """Current month id (year * 12 + month - 1)."""


@dataclass(frozen=True, slots=True)
class Spend:
    """Spend of one route for the current day and month (nano-USD)."""

    route_day: int
    route_month: int
    key_day: int
    key_month: int
    namespace_day: int
    namespace_month: int


@dataclass(frozen=True, slots=True)
class Reading:
    day: int
    month: int
    routes: list[Spend]


class BudgetStore(Protocol):
    async def reserve(
        self,
        route: str,
        member: str,
        amount: int,
        *,
        day_cap: int | None,
        month_cap: int | None,
        hold: float,
    ) -> Check:
        """Reserve ``amount`` nano-USD on the route if no cap would be passed."""
        ...

    async def settle(self, route: str, member: str, cost: int, *, key: str, namespace: str) -> bool:
        """Swap the reservation for the real ``cost``, once; False if there was none left
        (settled already, or expired) — then nothing changes."""
        ...

    async def read(self, routes: Sequence[str], *, key: str, namespace: str) -> Reading:
        """Current-period spend of each route, and of the key and namespace on it."""
        ...


def periods(now_ms: int) -> tuple[int, int, int, int]:
    """(day number, month id, ms when the day ends, ms when the month ends) — UTC."""
    day = now_ms // DAY_MS
    month, month_end = _month_of(day)
    return day, month, (day + 1) * DAY_MS, month_end


@functools.lru_cache(maxsize=64)
def _month_of(day: int) -> tuple[int, int]:
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    following = dt.date(date.year + date.month // 12, date.month % 12 + 1, 1)
    return date.year * 12 + date.month - 1, (following - dt.date(1970, 1, 1)).days * DAY_MS


def day_text(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def month_text(month: int) -> str:
    return f"{month // 12:04d}-{month % 12 + 1:02d}"


def budget_key(route: str) -> str:
    return f"kanal:bg:{{{route}}}"


def reservation_key(route: str, member: str) -> str:
    return f"kanal:bg:{{{route}}}:r:{member}"


def key_spend_key(route: str, key: str) -> str:
    return f"kanal:bg:{{{route}}}:k:{key}"


def namespace_spend_key(route: str, namespace: str) -> str:
    return f"kanal:bg:{{{route}}}:n:{namespace}"


# -- memory -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Periods:
    did: int = -1
    d: int = 0
    mid: int = -1
    m: int = 0
    expires: float = 0.0
    """ms."""

    def roll(self, day: int, month: int) -> None:
        if self.did != day:
            self.did, self.d = day, 0
        if self.mid != month:
            self.mid, self.m = month, 0

    def current(self, day: int, month: int) -> tuple[int, int]:
        return (self.d if self.did == day else 0), (self.m if self.mid == month else 0)


@dataclass(slots=True)
class _Held:
    amount: int
    day: int
    month: int
    expires: float
    """ms."""


@dataclass
class MemoryBudgetStore:
    """This process's budgets (``kanal up`` without Redis); same semantics as Redis."""

    clock: Callable[[], float] = time.time
    """Wall-clock seconds (UTC epoch): periods are calendar days and months."""
    _hashes: dict[str, _Periods] = field(default_factory=dict)
    _held: dict[str, _Held] = field(default_factory=dict)
    _ops: int = 0

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _hash(self, name: str, now: int) -> _Periods | None:
        entry = self._hashes.get(name)
        if entry is not None and entry.expires <= now:
            del self._hashes[name]
            return None
        return entry

    def _writable(self, name: str, now: int, day: int, month: int, month_end: int) -> _Periods:
        entry = self._hash(name, now)
        if entry is None:
            entry = self._hashes[name] = _Periods()
        entry.roll(day, month)
        entry.expires = month_end + DAY_MS
        return entry

    async def reserve(
        self,
        route: str,
        member: str,
        amount: int,
        *,
        day_cap: int | None,
        month_cap: int | None,
        hold: float,
    ) -> Check:
        now = self._now()
        self._ops += 1
        if self._ops % SWEEP_EVERY == 0:
            self.sweep(now)
        day, month, day_end, month_end = periods(now)
        entry = self._hash(budget_key(route), now) or _Periods()
        entry.roll(day, month)
        if month_cap is not None and entry.m + amount > month_cap:
            return Check(False, "month", entry.d, entry.m, (month_end - now) / 1000, day, month)
        if day_cap is not None and entry.d + amount > day_cap:
            return Check(False, "day", entry.d, entry.m, (day_end - now) / 1000, day, month)
        entry = self._writable(budget_key(route), now, day, month, month_end)
        entry.d += amount
        entry.m += amount
        self._held[reservation_key(route, member)] = _Held(
            amount, day, month, now + round(hold * 1000)
        )
        return Check(True, None, entry.d, entry.m, 0.0, day, month)

    async def settle(self, route: str, member: str, cost: int, *, key: str, namespace: str) -> bool:
        now = self._now()
        held = self._held.pop(reservation_key(route, member), None)
        if held is None or held.expires <= now:
            return False
        day, month, _, month_end = periods(now)
        delta = cost - held.amount
        entry = self._writable(budget_key(route), now, day, month, month_end)
        if delta and held.day == day:
            entry.d += delta
        if delta and held.month == month:
            entry.m += delta
        if cost > 0:
            for name in (key_spend_key(route, key), namespace_spend_key(route, namespace)):
                spend = self._writable(name, now, day, month, month_end)
                spend.d += cost
                spend.m += cost
        return True

    async def read(self, routes: Sequence[str], *, key: str, namespace: str) -> Reading:
        now = self._now()
        day, month, _, _ = periods(now)
        rows = []
        for route in routes:
            values: list[int] = []
            for name in (
                budget_key(route),
                key_spend_key(route, key),
                namespace_spend_key(route, namespace),
            ):
                entry = self._hash(name, now)
                values.extend(entry.current(day, month) if entry is not None else (0, 0))
            rows.append(Spend(*values))
        return Reading(day, month, rows)

    def sweep(self, now: int | None = None) -> None:
        """Forget expired hashes and reservations (bounded memory)."""
        now = self._now() if now is None else now
        for name in [n for n, e in self._hashes.items() if e.expires <= now]:
            del self._hashes[name]
        for name in [n for n, h in self._held.items() if h.expires <= now]:
            del self._held[name]

    def __len__(self) -> int:
        return len(self._hashes) + len(self._held)


# -- redis --------------------------------------------------------------------------------

PRELUDE_LUA = """
local function num(x) return string.format('%.0f', x) end
local function now_ms(shift)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(shift)
end
-- days since 1970-01-01 <-> proleptic Gregorian y, m, d (H. Hinnant's algorithms)
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor(
    (doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function days(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- ms -> day number, month id, ms at which the day ends, ms at which the month ends
local function periods(now)
  local day = math.floor(now / 86400000)
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return day, y * 12 + m - 1, (day + 1) * 86400000, days(ny, nm, 1) * 86400000
end
-- reset the fields of periods that have ended; current spend (day, month)
local function roll(h, day, mid)
  local f = redis.call('HMGET', h, 'did', 'd', 'mid', 'm')
  local d, m = tonumber(f[2]) or 0, tonumber(f[4]) or 0
  if tonumber(f[1]) ~= day then
    d = 0
    redis.call('HSET', h, 'did', num(day), 'd', '0')
  end
  if tonumber(f[3]) ~= mid then
    m = 0
    redis.call('HSET', h, 'mid', num(mid), 'm', '0')
  end
  return d, m
end
local function current(h, day, mid)
  local f = redis.call('HMGET', h, 'did', 'd', 'mid', 'm')
  local d, m = 0, 0
  if tonumber(f[1]) == day then d = tonumber(f[2]) or 0 end
  if tonumber(f[3]) == mid then m = tonumber(f[4]) or 0 end
  return d, m
end
"""

RESERVE_LUA = (
    PRELUDE_LUA
    + """
-- KEYS: budget hash, reservation; ARGV: amount, day cap, month cap (-1: none), hold ms, shift
local h = KEYS[1]
local now = now_ms(ARGV[5])
local day, mid, day_end, month_end = periods(now)
local d, m = roll(h, day, mid)
local amount, dcap, mcap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if mcap >= 0 and m + amount > mcap then return {0, 2, d, m, month_end - now, day, mid} end
if dcap >= 0 and d + amount > dcap then return {0, 1, d, m, day_end - now, day, mid} end
d = redis.call('HINCRBY', h, 'd', ARGV[1])
m = redis.call('HINCRBY', h, 'm', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. num(day) .. ':' .. num(mid), 'PX', ARGV[4])
redis.call('PEXPIREAT', h, num(month_end + 86400000))
return {1, 0, d, m, 0, day, mid}
"""
)

SETTLE_LUA = (
    PRELUDE_LUA
    + """
-- KEYS: budget hash, reservation, key hash, namespace hash; ARGV: cost, shift
local held = redis.call('GET', KEYS[2])
if not held then return 0 end
redis.call('DEL', KEYS[2])
local amount, rday, rmid = string.match(held, '^(-?%d+):(%d+):(%d+)$')
amount, rday, rmid = tonumber(amount), tonumber(rday), tonumber(rmid)
local now = now_ms(ARGV[2])
local day, mid, _, month_end = periods(now)
local cost = tonumber(ARGV[1])
local delta = cost - amount
roll(KEYS[1], day, mid)
if delta ~= 0 and rday == day then redis.call('HINCRBY', KEYS[1], 'd', num(delta)) end
if delta ~= 0 and rmid == mid then redis.call('HINCRBY', KEYS[1], 'm', num(delta)) end
local expires = num(month_end + 86400000)
redis.call('PEXPIREAT', KEYS[1], expires)
if cost > 0 then
  for i = 3, 4 do
    roll(KEYS[i], day, mid)
    redis.call('HINCRBY', KEYS[i], 'd', ARGV[1])
    redis.call('HINCRBY', KEYS[i], 'm', ARGV[1])
    redis.call('PEXPIREAT', KEYS[i], expires)
  end
end
return 1
"""
)

READ_LUA = (
    PRELUDE_LUA
    + """
-- KEYS: budget hash, key hash, namespace hash; ARGV: shift
local day, mid = periods(now_ms(ARGV[1]))
local out = {day, mid}
for i = 1, 3 do
  local d, m = current(KEYS[i], day, mid)
  out[#out + 1] = d
  out[#out + 1] = m
end
return out
"""
)

_EXCEEDED: tuple[Period | None, ...] = (None, "day", "month")


class RedisBudgetStore:
    """Budgets shared by every gateway on one Redis; periods follow the server's clock."""

    def __init__(self, client: aioredis.Redis, shift: float = 0.0) -> None:
        self.client = client
        self._shift_ms = str(round(shift * 1000))
        """Added to the server's clock: lets tests cross midnight without waiting."""
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._read = client.register_script(READ_LUA)

    async def reserve(
        self,
        route: str,
        member: str,
        amount: int,
        *,
        day_cap: int | None,
        month_cap: int | None,
        hold: float,
    ) -> Check:
        keys = (budget_key(route), reservation_key(route, member))
        args = (
            amount,
            -1 if day_cap is None else day_cap,
            -1 if month_cap is None else month_cap,
            max(1, round(hold * 1000)),
            self._shift_ms,
        )
        ok, which, d, m, retry, day, month = await self._reserve(keys=keys, args=args)
        return Check(bool(ok), _EXCEEDED[which], int(d), int(m), retry / 1000, int(day), int(month))

    async def settle(self, route: str, member: str, cost: int, *, key: str, namespace: str) -> bool:
        keys = (
            budget_key(route),
            reservation_key(route, member),
            key_spend_key(route, key),
            namespace_spend_key(route, namespace),
        )
        return bool(await self._settle(keys=keys, args=(cost, self._shift_ms)))

    async def read(self, routes: Sequence[str], *, key: str, namespace: str) -> Reading:
        if not routes:
            day, month, _, _ = periods(int(time.time() * 1000) + int(self._shift_ms))
            return Reading(day, month, [])
        async with self.client.pipeline(transaction=False) as pipe:
            for route in routes:
                keys = (
                    budget_key(route),
                    key_spend_key(route, key),
                    namespace_spend_key(route, namespace),
                )
                await self._read(keys=keys, args=(self._shift_ms,), client=pipe)
            results = await pipe.execute()
        day, month = int(results[0][0]), int(results[0][1])
        return Reading(day, month, [Spend(*(int(v) for v in r[2:])) for r in results])
