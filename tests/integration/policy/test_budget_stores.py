"""Contract of the budget stores: the same suite against memory and the real Redis.

``at(offset)`` gives a store whose "now" is the real now plus ``offset`` seconds (a shifted
clock for memory, a shifted server TIME for Redis): midnight and month ends are crossed
without waiting. Amounts are nano-dollars."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from kanal.gateway.policy._budget_store import (
    PRELUDE_LUA,
    BudgetStore,
    Check,
    MemoryBudgetStore,
    RedisBudgetStore,
    budget_key,
    key_spend_key,
    namespace_spend_key,
    periods,
    reservation_key,
)
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores

SLACK = 2.0
HOLD = 600.0
R = "team-a/chat"


class Bench:
    def __init__(self, client: aioredis.Redis | None) -> None:
        self.client = client
        self.offset = 0.0
        self.memory = MemoryBudgetStore(clock=lambda: time.time() + self.offset)

    def at(self, offset: float = 0.0) -> BudgetStore:
        if self.client is not None:
            return RedisBudgetStore(self.client, shift=offset)
        self.offset = offset
        return self.memory


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@contextlib.asynccontextmanager
async def bench(url: str | None) -> AsyncIterator[Bench]:
    # the gateway's own client (its blocking connection pool), not a bare from_url
    client = Stores.create(GatewaySettings(redis_url=url)).redis if url else None
    try:
        yield Bench(client)
    finally:
        if client is not None:
            await client.aclose()


def run(url: str | None, test: Callable[[Bench], Awaitable[None]]) -> None:
    async def main() -> None:
        async with bench(url) as b:
            await test(b)

    asyncio.run(main())


def offset_to(moment: dt.datetime) -> float:
    return moment.timestamp() - time.time()


def next_midnight() -> dt.datetime:
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)


def next_month_start() -> dt.datetime:
    today = dt.datetime.now(dt.UTC).date()
    first = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return dt.datetime.combine(first, dt.time(), dt.UTC)


async def reserve(
    store: BudgetStore, member: str, amount: int, day: int | None = None, month: int | None = None
) -> Check:
    return await store.reserve(R, member, amount, day_cap=day, month_cap=month, hold=HOLD)


async def settle(store: BudgetStore, member: str, cost: int, key: str = "k1") -> bool:
    return await store.settle(R, member, cost, key=key, namespace="team-a")


def test_reserve_up_to_the_day_cap_then_refuse_until_midnight(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        s = b.at(0)
        first = await s.reserve(R, "m1", 600, day_cap=1000, month_cap=None, hold=HOLD)
        assert first.admitted and first.day_spend == 600 and first.month_spend == 600
        assert (await s.reserve(R, "m2", 400, day_cap=1000, month_cap=None, hold=HOLD)).admitted
        refused = await s.reserve(R, "m3", 1, day_cap=1000, month_cap=None, hold=HOLD)
        assert not refused.admitted and refused.exceeded == "day"
        assert refused.day_spend == 1000
        until = (next_midnight() - dt.datetime.now(dt.UTC)).total_seconds()
        assert abs(refused.retry_after - until) <= SLACK

    run(store_url, test)


def test_month_cap_binds_first_and_waits_for_the_month_end(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        s = b.at(0)
        assert (await s.reserve(R, "m1", 900, day_cap=1000, month_cap=900, hold=HOLD)).admitted
        refused = await s.reserve(R, "m2", 200, day_cap=1000, month_cap=900, hold=HOLD)
        assert refused.exceeded == "month"
        until = (next_month_start() - dt.datetime.now(dt.UTC)).total_seconds()
        assert abs(refused.retry_after - until) <= SLACK

    run(store_url, test)


def test_settle_swaps_reservation_for_cost_once_and_records_key_and_namespace(
    store_url: str | None,
) -> None:
    async def test(b: Bench) -> None:
        s = b.at(0)
        await s.reserve(R, "m1", 500, day_cap=1000, month_cap=None, hold=HOLD)
        await s.reserve(R, "m2", 500, day_cap=1000, month_cap=None, hold=HOLD)
        assert await settle(s, "m1", 120, key="k1")
        assert not await settle(s, "m1", 999, key="k1")  # idempotent
        assert not await settle(s, "never", 5)
        assert await settle(s, "m2", 0, key="k2")  # failed call: released, nothing recorded
        reading = await s.read([R, "other/route"], key="k1", namespace="team-a")
        mine, other = reading.routes
        assert (mine.route_day, mine.route_month) == (120, 120)
        assert (mine.key_day, mine.key_month) == (120, 120)
        assert (mine.namespace_day, mine.namespace_month) == (120, 120)
        assert other.route_day == other.key_day == other.namespace_day == 0
        k2 = (await s.read([R], key="k2", namespace="team-a")).routes[0]
        assert k2.key_day == 0 and k2.namespace_day == 120
        assert (await s.reserve(R, "m3", 880, day_cap=1000, month_cap=None, hold=HOLD)).admitted

    run(store_url, test)


def test_settling_above_the_reservation_is_charged(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        s = b.at(0)
        await s.reserve(R, "m1", 100, day_cap=1000, month_cap=None, hold=HOLD)
        assert await settle(s, "m1", 950)
        refused = await s.reserve(R, "m2", 100, day_cap=1000, month_cap=None, hold=HOLD)
        assert not refused.admitted and refused.day_spend == 950

    run(store_url, test)


def test_a_new_day_starts_at_zero_while_the_month_carries_on(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        midnight = next_midnight()
        before = b.at(offset_to(midnight - dt.timedelta(seconds=30)))
        assert (await reserve(before, "m1", 1000, day=1000, month=10**6)).admitted
        refused = await reserve(before, "m2", 1, day=1000, month=10**6)
        assert refused.exceeded == "day" and abs(refused.retry_after - 30) <= SLACK
        after = b.at(offset_to(midnight + dt.timedelta(seconds=30)))
        fresh = await reserve(after, "m3", 1000, day=1000, month=10**6)
        assert fresh.admitted and fresh.day_spend == 1000
        if midnight.day != 1:  # same month: both days count
            assert fresh.month_spend == 2000
        # m1 settles after midnight: its day is over, the month is corrected
        assert await settle(after, "m1", 400)
        reading = await after.read([R], key="k1", namespace="team-a")
        assert reading.routes[0].route_day == 1000
        if midnight.day != 1:
            assert reading.routes[0].route_month == 1400
        assert reading.day == periods(int(midnight.timestamp() * 1000))[0]

    run(store_url, test)


def test_a_new_month_starts_at_zero(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        start = next_month_start()
        before = b.at(offset_to(start - dt.timedelta(seconds=30)))
        assert (await reserve(before, "m1", 900, month=1000)).admitted
        assert not (await reserve(before, "m2", 900, month=1000)).admitted
        after = b.at(offset_to(start + dt.timedelta(seconds=30)))
        fresh = await reserve(after, "m3", 900, month=1000)
        assert fresh.admitted and fresh.month_spend == 900

    run(store_url, test)


def test_a_reservation_expires_after_its_hold(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        s = b.at(0)
        await s.reserve(R, "m1", 500, day_cap=1000, month_cap=None, hold=0.2)
        await asyncio.sleep(0.3)
        assert not await settle(s, "m1", 10)  # gone: the reserved amount stays charged
        assert (await s.read([R], key="k1", namespace="team-a")).routes[0].route_day == 500

    run(store_url, test)


def test_concurrent_reservations_never_pass_the_cap(store_url: str | None) -> None:
    async def test(b: Bench) -> None:
        s = b.at(0)
        checks = await asyncio.gather(
            *(s.reserve(R, f"m{i}", 7, day_cap=100, month_cap=None, hold=HOLD) for i in range(120))
        )
        assert sum(c.admitted for c in checks) == 14  # 14 * 7 = 98 <= 100 < 105
        assert max(c.day_spend for c in checks) == 98

    run(store_url, test)


# -- what only one of them has -------------------------------------------------------------


def test_redis_keys_share_the_route_hash_tag_and_expire(redis_url: str) -> None:
    async def test(b: Bench) -> None:
        client = b.client
        assert client is not None
        s = b.at(0)
        await s.reserve(R, "m1", 50, day_cap=1000, month_cap=None, hold=30)
        await s.reserve(R, "m2", 50, day_cap=1000, month_cap=None, hold=30)
        assert 29_000 < await client.pttl(reservation_key(R, "m2")) <= 30_000
        await settle(s, "m1", 20)
        names = {k.decode() for k in await client.keys("*")}
        assert names == {
            budget_key(R),
            reservation_key(R, "m2"),
            key_spend_key(R, "k1"),
            namespace_spend_key(R, "team-a"),
        }
        assert {re.search(r"\{([^}]*)\}", n).group(1) for n in names} == {R}  # type: ignore[union-attr]
        month_end = periods(int(time.time() * 1000))[3]
        for name in (budget_key(R), key_spend_key(R, "k1"), namespace_spend_key(R, "team-a")):
            expires = await client.pexpiretime(name)
            assert expires == month_end + 86_400_000

    run(redis_url, test)


def test_redis_calendar_matches_python(redis_url: str) -> None:
    """The Lua day/month arithmetic against datetime, across centuries and leap years."""
    rng = random.Random(4)
    moments = [int(dt.datetime(y, 1, 1, tzinfo=dt.UTC).timestamp() * 1000) for y in (1970, 2000)]
    moments += [
        int(dt.datetime(y, m, 1, tzinfo=dt.UTC).timestamp() * 1000) + delta
        for y in (1999, 2000, 2024, 2025, 2100, 2400)
        for m in range(1, 13)
        for delta in (-1, 0, 1)
    ]
    moments += [rng.randrange(0, 7_000_000_000_000) for _ in range(2000)]
    script = (
        PRELUDE_LUA
        + """
local out = {}
for i = 1, #ARGV do
  local d, m, de, me = periods(tonumber(ARGV[i]))
  out[#out + 1] = {d, m, de, me}
end
return out
"""
    )

    async def main() -> None:
        client = aioredis.from_url(redis_url)
        try:
            result = await client.eval(script, 0, *moments)
        finally:
            await client.aclose()
        assert [tuple(r) for r in result] == [periods(m) for m in moments]

    asyncio.run(main())


def test_memory_store_forgets_what_expired() -> None:
    async def main() -> None:
        now = [time.time()]
        store = MemoryBudgetStore(clock=lambda: now[0])
        for i in range(50):
            await store.reserve(f"r{i}", "m", 10, day_cap=100, month_cap=None, hold=5)
            await store.settle(f"r{i}", "m", 5, key="k", namespace="n")
        await store.reserve("held", "m", 10, day_cap=100, month_cap=None, hold=5)
        assert len(store) == 152  # 51 budget hashes, 50 key + 50 namespace, 1 reservation
        now[0] += 10
        store.sweep()
        assert len(store) == 151  # the reservation went; the hashes live to the month's end
        now[0] += 40 * 86400
        store.sweep()
        assert len(store) == 0

    asyncio.run(main())
