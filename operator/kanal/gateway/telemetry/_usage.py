"""Usage events: one per authenticated request, written off the request path, summed by
``GET /v1/usage`` and ``kanal usage``.

The sink's ``finish`` only builds the event and puts it on a bounded queue; a background
task takes whatever is queued (up to ``BATCH`` events) and writes it in one go. A full queue
or a failed write drops events — counted in ``dropped`` and logged (at most one warning per
``LOG_EVERY`` seconds) — and never fails or slows a request.

Where events go:

- Redis (the gateway has ``--redis``): each batch is one MULTI/EXEC pipeline of
  ``XADD <usage_key> MAXLEN ~ <usage_stream_maxlen>`` per event (the raw events, for
  export: ``XRANGE``/``XREAD``/consumer groups) plus ``HINCRBY`` on per-day aggregate
  hashes, ``<usage_key>:day:<YYYY-MM-DD>:<namespace>`` (expire after
  ``usage_retention_days``). The batch is summed in Python first, so a burst of requests
  of the same key and route is a handful of ``HINCRBY`` whatever its size. All keys share
  the hash tag of ``usage_key`` (one Cluster slot). A failed batch is dropped, not
  retried: its EXEC may have been applied, and a retry would count it twice.
- Memory (``kanal up`` without ``--redis``): the last ``usage_memory_events`` events and
  the same per-day aggregates, in this process.

Aggregates: a hash field is ``<key id>␟<route>␟<backend>␟<model>␟<metric>`` (␟ is the ASCII
unit separator), so a summary reads one hash per day in the range — never the stream —
and can group by key, route, backend, model and day (the namespace is the hash's). Its
size is bounded by the distinct (key, route, backend, model) combinations of a namespace
in a day.

What is counted (``input_tokens``/``output_tokens``/``cost_usd``): tokens the upstreams
processed — the provider's usage report when it sent one (also at the end of streams: the
gateway always asks for ``include_usage``), else the gateway's estimate of what was
produced (streams cut short by an upstream failure or by the caller leaving). Cached
answers cost nothing and did not reach an upstream: they count in ``cache_hits`` and their
tokens in ``cached_input_tokens``/``cached_output_tokens`` (the tokens the cache saved),
not in ``input_tokens``/``output_tokens``. ``errors`` counts outcomes ``error`` and
``stream_error``; callers that went away count in ``disconnects``.

Tenancy: events are attributed to the caller's namespace (its tenant), also on routes
another namespace shares with it; a caller reads its own namespace's usage only.
Requests without an authenticated caller (401) have no tenant to bill: no event (the
request log and the metrics have them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kanal.gateway.money import NANO, usd
from kanal.gateway.stores import REDIS_ERRORS
from kanal.gateway.telemetry._record import RequestRecord

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from kanal.gateway.runtime import Runtime
    from kanal.gateway.settings import GatewaySettings

log = logging.getLogger("kanal.gateway.usage")

BATCH = 512
"""Most events written in one pipeline."""
LINGER = 0.05
"""Seconds the writer waits after the first queued event for more to join its batch."""
LOG_EVERY = 10.0
"""Seconds between two warnings about dropped events."""
SEP = "\x1f"
GROUPS = ("key", "namespace", "route", "model", "backend", "day")
"""What ``GET /v1/usage`` can group by."""
METRICS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cached_output_tokens",
    "cost_nano",
    "cache_hits",
    "errors",
    "disconnects",
)
_SHORT = dict(zip(METRICS, ("r", "i", "o", "ci", "co", "c", "h", "e", "d"), strict=True))
_LONG = {short: name for name, short in _SHORT.items()}


def day_of(timestamp: float) -> str:
    """The UTC date of an epoch timestamp, as YYYY-MM-DD."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One request, as billed."""

    ts: float
    """Arrival, epoch seconds."""
    request_id: str
    key: str
    """The caller's id (``key:<ns>/<secret>``, ``sa:<ns>/<name>``, ``anonymous:<ns>``)."""
    namespace: str
    route: str | None
    backend: str | None
    model: str | None
    """The upstream model that answered."""
    operation: str
    protocol: str
    stream: bool
    input_tokens: int
    output_tokens: int
    cost_nano: int
    latency_ms: float
    ttft_ms: float | None
    cached: bool
    outcome: str
    status: int
    error_code: str | None
    usage_source: str
    """provider, estimated, or none (no usage: the call produced nothing)."""

    @classmethod
    def of(cls, record: RequestRecord, runtime: Runtime) -> UsageEvent | None:
        """The event of a finished request; None when no caller was authenticated."""
        caller = record.caller
        if caller is None:
            return None
        usage = record.usage
        ttft = record.ttft
        return cls(
            ts=record.started_at,
            request_id=record.request_id,
            key=caller.id,
            namespace=caller.tenant,
            route=record.route_id,
            backend=record.backend,
            model=record.model,
            operation=record.operation,
            protocol=record.protocol,
            stream=record.stream,
            input_tokens=usage.prompt_tokens if usage is not None else 0,
            output_tokens=usage.completion_tokens if usage is not None else 0,
            cost_nano=round(record.cost_usd(runtime.snapshot) * NANO),
            latency_ms=round(record.duration * 1000, 3),
            ttft_ms=round(ttft * 1000, 3) if ttft is not None else None,
            cached=record.cached,
            outcome=record.outcome_name,
            status=record.status,
            error_code=record.error_code,
            usage_source=record.usage_source,
        )

    @property
    def day(self) -> str:
        return day_of(self.ts)

    @property
    def cost_usd(self) -> float:
        return usd(self.cost_nano)

    def as_json(self) -> dict[str, Any]:
        """The event as JSON (what the Redis Stream entry holds, typed)."""
        return {
            "ts": round(self.ts, 3),
            "request_id": self.request_id,
            "key": self.key,
            "namespace": self.namespace,
            "route": self.route,
            "backend": self.backend,
            "model": self.model,
            "operation": self.operation,
            "protocol": self.protocol,
            "stream": self.stream,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "cached": self.cached,
            "outcome": self.outcome,
            "status": self.status,
            "error_code": self.error_code,
            "usage_source": self.usage_source,
        }

    def stream_fields(self) -> dict[str, str]:
        """The Redis Stream entry: strings, absent fields left out, booleans as 0/1."""
        fields: dict[str, str] = {}
        for name, value in self.as_json().items():
            if value is None:
                continue
            if isinstance(value, bool):
                fields[name] = "1" if value else "0"
            elif name == "cost_usd":
                fields[name] = f"{self.cost_nano / NANO:.9f}"
            else:
                fields[name] = str(value)
        return fields

    def contributions(self) -> dict[str, int]:
        """What the event adds to the aggregates (non-zero metrics only)."""
        out = {"requests": 1}
        if self.cached:
            out["cache_hits"] = 1
            out["cached_input_tokens"] = self.input_tokens
            out["cached_output_tokens"] = self.output_tokens
        else:
            out["input_tokens"] = self.input_tokens
            out["output_tokens"] = self.output_tokens
            out["cost_nano"] = self.cost_nano
        if self.outcome in ("error", "stream_error"):
            out["errors"] = 1
        elif self.outcome == "client_disconnected":
            out["disconnects"] = 1
        return {k: v for k, v in out.items() if v}

    @property
    def combination(self) -> str:
        return SEP.join(
            _clean(v) for v in (self.key, self.route or "", self.backend or "", self.model or "")
        )


def _clean(value: str) -> str:
    return value.replace(SEP, " ")


Aggregate = dict[str, int]
"""One day of one namespace: ``<combination>␟<metric short name>`` -> amount."""


def fold(events: Iterable[UsageEvent]) -> dict[tuple[str, str], Aggregate]:
    """Sum events into (day, namespace) -> aggregate increments."""
    out: dict[tuple[str, str], Aggregate] = {}
    for event in events:
        agg = out.setdefault((event.day, event.namespace), {})
        prefix = event.combination + SEP
        for metric, amount in event.contributions().items():
            name = prefix + _SHORT[metric]
            agg[name] = agg.get(name, 0) + amount
    return out


# -- summaries ------------------------------------------------------------------------------


@dataclass(slots=True)
class Totals:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))

    def add(self, metric: str, amount: int) -> None:
        self.values[metric] += amount

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric in METRICS:
            if metric == "cost_nano":
                out["cost_usd"] = usd(self.values[metric])
            else:
                out[metric] = self.values[metric]
        return out


def summarize(
    namespace: str,
    days: Sequence[tuple[str, Mapping[str, int]]],
    group_by: Sequence[str],
    route: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (one per group, sorted by the group's values) and totals of the aggregates of
    ``namespace`` for the given days, optionally only those of ``route``."""
    groups: dict[tuple[str | None, ...], Totals] = {}
    totals = Totals()
    for day, aggregate in days:
        for name, amount in aggregate.items():
            combination, _, short = name.rpartition(SEP)
            metric = _LONG.get(short)
            parts = combination.split(SEP)
            if metric is None or len(parts) != 4:
                continue  # not ours (a future field): skip rather than miscount
            key, route_id, backend, model = (p or None for p in parts)
            if route is not None and route_id != route:
                continue
            values = {
                "key": key,
                "namespace": namespace,
                "route": route_id,
                "model": model,
                "backend": backend,
                "day": day,
            }
            group = tuple(values[g] for g in group_by)
            row = groups.get(group)
            if row is None:
                row = groups[group] = Totals()
            row.add(metric, amount)
            totals.add(metric, amount)
    rows = []
    for group in sorted(groups, key=lambda g: tuple(v or "" for v in g)):
        rows.append({**dict(zip(group_by, group, strict=True)), **groups[group].as_json()})
    return rows, totals.as_json()


# -- stores ---------------------------------------------------------------------------------


class UsageStore(Protocol):
    async def append(self, events: Sequence[UsageEvent]) -> None:
        """Write one batch: the events and their aggregate increments."""
        ...

    async def aggregates(self, namespace: str, days: Sequence[str]) -> list[Aggregate]:
        """The aggregate of ``namespace`` for each day (empty where there is none)."""
        ...

    async def recent(self, count: int) -> list[UsageEvent]:
        """The newest ``count`` events, oldest first (tests, debugging)."""
        ...


class MemoryUsageStore:
    """This process's memory: the newest events and every day's aggregates of the
    retention period."""

    def __init__(self, max_events: int, retention_days: int) -> None:
        self.events: deque[UsageEvent] = deque(maxlen=max(1, max_events))
        self.retention_days = retention_days
        self.days: dict[tuple[str, str], Aggregate] = {}

    async def append(self, events: Sequence[UsageEvent]) -> None:
        self.events.extend(events)
        for where, increments in fold(events).items():
            aggregate = self.days.setdefault(where, {})
            for name, amount in increments.items():
                aggregate[name] = aggregate.get(name, 0) + amount
        self._expire()

    def _expire(self) -> None:
        oldest = day_of(time.time() - self.retention_days * 86400.0)
        for where in [w for w in self.days if w[0] < oldest]:
            del self.days[where]

    async def aggregates(self, namespace: str, days: Sequence[str]) -> list[Aggregate]:
        return [dict(self.days.get((day, namespace), {})) for day in days]

    async def recent(self, count: int) -> list[UsageEvent]:
        return list(self.events)[-count:] if count > 0 else []


class RedisUsageStore:
    """The Redis Stream of events plus per-day aggregate hashes (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, key: str, maxlen: int, retention_days: int) -> None:
        self.redis = redis
        self.key = key
        self.maxlen = maxlen
        self.ttl = max(1, retention_days) * 86400

    def day_key(self, day: str, namespace: str) -> str:
        return f"{self.key}:day:{day}:{namespace}"

    async def append(self, events: Sequence[UsageEvent]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(
                    self.key,
                    event.stream_fields(),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
            for (day, namespace), increments in fold(events).items():
                name = self.day_key(day, namespace)
                for field_name, amount in increments.items():
                    pipe.hincrby(name, field_name, amount)
                pipe.expire(name, self.ttl)
            await pipe.execute()

    async def aggregates(self, namespace: str, days: Sequence[str]) -> list[Aggregate]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self.day_key(day, namespace))
            replies = await pipe.execute()
        return [{_text(k): int(v) for k, v in (reply or {}).items()} for reply in replies]

    async def recent(self, count: int) -> list[UsageEvent]:
        if count <= 0:
            return []
        entries = await self.redis.xrevrange(self.key, count=count) or []
        return [event_from_fields(fields or {}) for _, fields in reversed(entries)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def event_from_fields(raw: Mapping[Any, Any]) -> UsageEvent:
    """A Redis Stream entry back as an event."""
    fields = {_text(k): _text(v) for k, v in raw.items()}

    def opt(name: str) -> str | None:
        return fields.get(name) or None

    ttft = opt("ttft_ms")
    return UsageEvent(
        ts=float(fields["ts"]),
        request_id=fields["request_id"],
        key=fields["key"],
        namespace=fields["namespace"],
        route=opt("route"),
        backend=opt("backend"),
        model=opt("model"),
        operation=fields["operation"],
        protocol=fields["protocol"],
        stream=fields.get("stream") == "1",
        input_tokens=int(fields["input_tokens"]),
        output_tokens=int(fields["output_tokens"]),
        cost_nano=round(float(fields["cost_usd"]) * NANO),
        latency_ms=float(fields["latency_ms"]),
        ttft_ms=float(ttft) if ttft is not None else None,
        cached=fields.get("cached") == "1",
        outcome=fields["outcome"],
        status=int(fields["status"]),
        error_code=opt("error_code"),
        usage_source=fields["usage_source"],
    )


def store_for(settings: GatewaySettings, redis: aioredis.Redis | None) -> UsageStore:
    if redis is not None:
        return RedisUsageStore(
            redis, settings.usage_key, settings.usage_stream_maxlen, settings.usage_retention_days
        )
    return MemoryUsageStore(settings.usage_memory_events, settings.usage_retention_days)


# -- the sink -------------------------------------------------------------------------------


class UsageSink:
    """Turns finished requests into usage events and writes them in the background."""

    def __init__(self, runtime: Runtime, store: UsageStore, queue_size: int = 10_000) -> None:
        self.runtime = runtime
        self.store = store
        self._queue: deque[UsageEvent] = deque()
        self._queue_size = max(1, queue_size)
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._progress: asyncio.Condition | None = None
        self._closing = False
        self.enqueued = 0
        """Events accepted onto the queue."""
        self.written = 0
        """Events written to the store."""
        self.dropped = 0
        """Events lost: queue full, or their batch failed to write."""
        self._settled = 0  # written + dropped after being enqueued
        self._last_warning = 0.0
        self._dropped_since_warning = 0

    # -- Sink --------------------------------------------------------------------------

    def start(self, record: RequestRecord, carrier: Mapping[str, str]) -> None:
        return None

    def finish(self, record: RequestRecord) -> None:
        event = UsageEvent.of(record, self.runtime)
        if event is None:
            return
        if len(self._queue) >= self._queue_size or self._closing:
            self._drop(1, "the usage queue is full")
            return
        self._queue.append(event)
        self.enqueued += 1
        self._ensure_writer().set()

    async def close(self) -> None:
        """Write what is queued (for up to 5 s), then stop."""
        with contextlib.suppress(TimeoutError):
            await self.flush(timeout=5.0)
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._queue:
            self._drop(len(self._queue), "the gateway stopped before they were written")
            self._queue.clear()

    # -- reading -----------------------------------------------------------------------

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait until every event enqueued so far is written (or dropped); TimeoutError
        after ``timeout`` seconds."""
        target = self.enqueued
        if self._settled >= target or self._progress is None:
            return
        progress = self._progress
        async with asyncio.timeout(timeout), progress:
            await progress.wait_for(lambda: self._settled >= target)

    async def summary(
        self,
        namespace: str,
        start: dt.date,
        end: dt.date,
        group_by: Sequence[str],
        route: str | None = None,
    ) -> dict[str, Any]:
        """The ``usage.summary`` of ``namespace`` from ``start`` to ``end`` (inclusive)."""
        # read-your-writes on this replica: what this gateway has queued is written first
        with contextlib.suppress(TimeoutError):
            await self.flush(timeout=1.0)
        days = [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
        aggregates = await self.store.aggregates(namespace, days)
        rows, totals = summarize(
            namespace, list(zip(days, aggregates, strict=True)), group_by, route
        )
        return {
            "object": "usage.summary",
            "namespace": namespace,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "group_by": list(group_by),
            "route": route,
            "data": rows,
            "totals": totals,
        }

    # -- writing -----------------------------------------------------------------------

    def _ensure_writer(self) -> asyncio.Event:
        if self._wake is None or self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._progress = asyncio.Condition()
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="kanal-usage-writer"
            )
        return self._wake

    async def _write_loop(self) -> None:
        wake, progress = self._wake, self._progress
        assert wake is not None and progress is not None
        while True:
            await wake.wait()
            if len(self._queue) < BATCH:
                # let a batch gather: one wake-up per LINGER under load, not one per request
                await asyncio.sleep(LINGER)
            wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                try:
                    await self.store.append(batch)
                except asyncio.CancelledError:
                    self._drop(len(batch), "the gateway stopped while writing them")
                    raise
                except REDIS_ERRORS as exc:
                    self._drop(len(batch), f"writing them failed ({type(exc).__name__}: {exc})")
                except Exception:
                    log.exception("writing %d usage events failed", len(batch))
                    self._drop(len(batch), "writing them failed")
                else:
                    self.written += len(batch)
                self._settled += len(batch)
                async with progress:
                    progress.notify_all()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._dropped_since_warning += count
        now = time.monotonic()
        if now - self._last_warning >= LOG_EVERY:
            log.warning(
                "dropped %d usage event(s): %s (%d dropped since start)",
                self._dropped_since_warning,
                why,
                self.dropped,
            )
            self._last_warning = now
            self._dropped_since_warning = 0
