"""Usage events offline: from records to events, folding into per-day aggregates, summaries,
the /v1/usage query, the sink's queue (drops counted, never raised), the CLI table."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from multidict import MultiDict

from kanal.gateway.errors import GatewayError
from kanal.gateway.policy.base import Call, Caller, Outcome, Usage
from kanal.gateway.runtime import Runtime
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.telemetry import RequestRecord
from kanal.gateway.telemetry._usage import (
    NANO,
    SEP,
    MemoryUsageStore,
    UsageEvent,
    UsageSink,
    event_from_fields,
    fold,
    summarize,
)
from kanal.gateway.usage_api import parse_query
from kanal.snapshot import BackendConfig, ModelInfo, RouteConfig, Snapshot, Target, Tier
from kanal.usage_cli import render_table

DAY1 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp()
DAY2 = dt.datetime(2026, 3, 2, 0, 0, 1, tzinfo=dt.UTC).timestamp()


def event(**changes: Any) -> UsageEvent:
    base = UsageEvent(
        ts=DAY1,
        request_id="req_1",
        key="key:team-a/alice",
        namespace="team-a",
        route="team-a/chat",
        backend="team-a/openai",
        model="gpt-4o-mini",
        operation="chat",
        protocol="http",
        stream=False,
        input_tokens=10,
        output_tokens=5,
        cost_nano=1_500,
        latency_ms=12.5,
        ttft_ms=12.5,
        cached=False,
        outcome="ok",
        status=200,
        error_code=None,
        usage_source="provider",
    )
    return replace(base, **changes)


def summary(
    events: Sequence[UsageEvent], group_by: Sequence[str], route: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    folded = fold(events)
    days = sorted({d for d, _ in folded})
    return summarize("team-a", [(d, folded.get((d, "team-a"), {})) for d in days], group_by, route)


def test_fold_sums_a_batch_into_few_fields() -> None:
    folded = fold([event()] * 500)
    assert list(folded) == [("2026-03-01", "team-a")]
    aggregate = folded[("2026-03-01", "team-a")]
    prefix = SEP.join(["key:team-a/alice", "team-a/chat", "team-a/openai", "gpt-4o-mini"])
    assert aggregate == {
        prefix + SEP + "r": 500,
        prefix + SEP + "i": 5000,
        prefix + SEP + "o": 2500,
        prefix + SEP + "c": 750_000,
    }


def test_groups_and_totals() -> None:
    events = [
        event(),
        event(key="key:team-a/bob", input_tokens=7, output_tokens=3, cost_nano=999),
        event(route="team-a/code", model="gpt-4o", ts=DAY2),
        event(
            outcome="error",
            status=502,
            error_code="upstream_error",
            input_tokens=0,
            output_tokens=0,
            cost_nano=0,
            usage_source="none",
        ),
        event(outcome="client_disconnected", usage_source="estimated"),
    ]
    rows, totals = summary(events, ["key"])
    assert [r["key"] for r in rows] == ["key:team-a/alice", "key:team-a/bob"]
    alice = rows[0]
    assert alice["requests"] == 4 and alice["input_tokens"] == 30 and alice["output_tokens"] == 15
    assert alice["errors"] == 1 and alice["disconnects"] == 1
    assert alice["cost_usd"] == pytest.approx(4_500 / NANO)
    assert totals["requests"] == 5 and totals["input_tokens"] == 37
    assert totals["cost_usd"] == round((4_500 + 999) / NANO, 9)

    rows, _ = summary(events, ["route", "day"])
    assert [(r["route"], r["day"], r["requests"]) for r in rows] == [
        ("team-a/chat", "2026-03-01", 4),
        ("team-a/code", "2026-03-02", 1),
    ]
    rows, _ = summary(events, ["model", "backend", "namespace"])
    assert {(r["model"], r["backend"], r["namespace"]) for r in rows} == {
        ("gpt-4o-mini", "team-a/openai", "team-a"),
        ("gpt-4o", "team-a/openai", "team-a"),
    }
    rows, totals = summary(events, ["key"], route="team-a/code")
    assert [(r["key"], r["requests"]) for r in rows] == [("key:team-a/alice", 1)]
    assert totals["requests"] == 1
    rows, totals = summary(events, [])
    assert rows == [{**totals}]


def test_cached_answers_count_as_hits_not_upstream_tokens() -> None:
    _, totals = summary([event(), event(cached=True, cost_nano=0)], ["key"])
    assert totals["requests"] == 2 and totals["cache_hits"] == 1
    assert totals["input_tokens"] == 10 and totals["output_tokens"] == 5
    assert totals["cached_input_tokens"] == 10 and totals["cached_output_tokens"] == 5
    assert totals["cost_usd"] == 1_500 / NANO


def test_requests_without_route_or_backend_are_grouped_as_null() -> None:
    rows, _ = summary([event(route=None, backend=None, model=None, outcome="error")], ["route"])
    assert rows[0]["route"] is None and rows[0]["errors"] == 1


def test_separator_in_a_name_cannot_shift_fields() -> None:
    rows, _ = summary([event(model=f"odd{SEP}model")], ["model", "backend"])
    assert rows[0]["backend"] == "team-a/openai"
    assert rows[0]["model"] == "odd model"


def test_stream_fields_round_trip() -> None:
    original = event(cost_nano=123_456_789, ttft_ms=None, error_code="x", stream=True)
    fields = original.stream_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert "ttft_ms" not in fields and fields["cost_usd"] == "0.123456789"
    assert event_from_fields({k.encode(): v.encode() for k, v in fields.items()}) == replace(
        original, ts=round(original.ts, 3)
    )


# -- records -> events ------------------------------------------------------------------


def priced_runtime() -> Runtime:
    runtime = Runtime(GatewaySettings())
    runtime.snapshot = Snapshot(
        backends={
            "team-a/openai": BackendConfig(
                id="team-a/openai",
                provider="openai",
                base_url="http://x/v1",
                models={
                    "gpt-4o-mini": ModelInfo(
                        name="gpt-4o-mini",
                        context_window=1000,
                        usd_per_input_token=1e-6,
                        usd_per_output_token=2e-6,
                    )
                },
            )
        }
    )
    return runtime


ROUTE = RouteConfig(
    id="team-a/chat",
    namespace="team-a",
    model="chat",
    tiers=(
        Tier(priority=0, targets=(Target(backend="team-a/openai", model="gpt-4o-mini", weight=1),)),
    ),
    tenants=frozenset({"team-a"}),
)


def record(outcome: Outcome | None = None, **changes: Any) -> RequestRecord:
    caller = Caller("team-a", key="alice")
    rec = RequestRecord("http", "chat", "req_9")
    rec.caller = caller
    rec.call = Call(op="chat", caller=caller, route=ROUTE, body={}, request_id="req_9")
    rec.call.outcome = outcome
    rec.trace.backend, rec.trace.model = "team-a/openai", "gpt-4o-mini"
    for name, value in changes.items():
        setattr(rec, name, value)
    rec.ended = rec.started + 0.25
    return rec


def test_event_of_a_record_is_priced_and_named() -> None:
    ev = UsageEvent.of(record(Outcome(usage=Usage(100, 50))), priced_runtime())
    assert ev is not None
    assert ev.key == "key:team-a/alice" and ev.namespace == "team-a"
    assert (ev.route, ev.backend, ev.model) == ("team-a/chat", "team-a/openai", "gpt-4o-mini")
    assert (ev.input_tokens, ev.output_tokens, ev.usage_source) == (100, 50, "provider")
    assert ev.cost_nano == 200_000  # 100 * $1e-6 + 50 * $2e-6
    assert ev.latency_ms == pytest.approx(250, abs=0.01)
    assert ev.outcome == "ok" and ev.status == 200


def test_event_of_cut_and_failed_records() -> None:
    runtime = priced_runtime()
    cut = UsageEvent.of(
        record(Outcome(usage=Usage(100, 7, "estimated")), disconnected=True, stream=True),
        runtime,
    )
    assert cut is not None
    assert (cut.outcome, cut.usage_source, cut.output_tokens) == (
        "client_disconnected",
        "estimated",
        7,
    )
    err = GatewayError(502, "upstream failed", code="upstream_error")
    failed = UsageEvent.of(record(Outcome(error=err), error=err), runtime)
    assert failed is not None
    assert (failed.outcome, failed.status, failed.error_code) == ("error", 502, "upstream_error")
    assert (failed.input_tokens, failed.cost_nano, failed.usage_source) == (0, 0, "none")
    cached = UsageEvent.of(record(Outcome(usage=Usage(100, 50), cached=True)), runtime)
    assert cached is not None and cached.cached and cached.cost_nano == 0


def test_no_event_without_an_authenticated_caller() -> None:
    rec = RequestRecord("http", "chat", "req_x")
    rec.error = GatewayError(401, "no key", code="invalid_api_key")
    assert UsageEvent.of(rec, priced_runtime()) is None


# -- the sink ---------------------------------------------------------------------------


class FailingStore(MemoryUsageStore):
    def __init__(self) -> None:
        super().__init__(100, 30)
        self.calls = 0

    async def append(self, events: Sequence[UsageEvent]) -> None:
        self.calls += 1
        raise ConnectionError("redis is down")


def test_sink_writes_in_the_background_and_flush_waits() -> None:
    async def main() -> None:
        store = MemoryUsageStore(100, 30)
        sink = UsageSink(priced_runtime(), store, queue_size=10)
        for _ in range(3):
            sink.finish(record(Outcome(usage=Usage(1, 1))))
        assert not store.events  # nothing written synchronously
        await sink.flush()
        assert len(store.events) == 3 and sink.written == 3 and sink.dropped == 0
        await sink.close()

    asyncio.run(main())


def test_sink_drops_and_counts_when_the_queue_is_full() -> None:
    async def main() -> None:
        store = MemoryUsageStore(100, 30)
        sink = UsageSink(priced_runtime(), store, queue_size=2)
        for _ in range(5):
            sink.finish(record(Outcome(usage=Usage(1, 1))))  # the writer has not run yet
        assert sink.dropped == 3
        await sink.flush()
        assert sink.written == 2 and len(store.events) == 2
        await sink.close()

    asyncio.run(main())


def test_sink_survives_a_failing_store(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = FailingStore()
        sink = UsageSink(priced_runtime(), store, queue_size=10)
        sink.finish(record(Outcome(usage=Usage(1, 1))))
        sink.finish(record(Outcome(usage=Usage(1, 1))))
        await sink.flush()
        assert sink.dropped == 2 and sink.written == 0 and store.calls == 1
        sink.finish(record(Outcome(usage=Usage(1, 1))))  # still accepting
        await sink.flush()
        assert sink.dropped == 3 and store.calls == 2
        await sink.close()

    asyncio.run(main())
    assert "dropped 2 usage event(s): writing them failed (ConnectionError" in caplog.text


def test_memory_store_keeps_the_newest_events_and_all_aggregates() -> None:
    async def main() -> None:
        store = MemoryUsageStore(max_events=3, retention_days=100_000)
        await store.append([event(request_id=f"r{i}") for i in range(5)])
        assert [e.request_id for e in await store.recent(10)] == ["r2", "r3", "r4"]
        (aggregate,) = await store.aggregates("team-a", ["2026-03-01"])
        assert sum(v for k, v in aggregate.items() if k.endswith(SEP + "r")) == 5
        assert await store.aggregates("team-b", ["2026-03-01"]) == [{}]

    asyncio.run(main())


def test_memory_store_forgets_days_past_retention() -> None:
    async def main() -> None:
        store = MemoryUsageStore(max_events=3, retention_days=30)
        now = dt.datetime.now(dt.UTC).timestamp()
        await store.append([event(ts=now - 40 * 86400)])
        await store.append([event(ts=now)])
        assert {d for d, _ in store.days} == {dt.datetime.now(dt.UTC).date().isoformat()}

    asyncio.run(main())


# -- the query --------------------------------------------------------------------------

TODAY = dt.date(2026, 3, 5)


def query(**params: str) -> MultiDict[str]:
    return MultiDict(params)


def test_query_defaults_to_today_by_key() -> None:
    parsed = parse_query(query(), TODAY)
    assert parsed.group_by == ("key",) and parsed.start == parsed.end == TODAY
    assert parse_query(query(start="2026-03-01"), TODAY).end == dt.date(2026, 3, 1)
    parsed = parse_query(MultiDict([("group_by", "route, day"), ("group_by", "key,route")]), TODAY)
    assert parsed.group_by == ("route", "day", "key")
    assert parse_query(query(group_by=""), TODAY).group_by == ()


@pytest.mark.parametrize(
    ("params", "param", "says"),
    [
        ({"group_by": "user"}, "group_by", "is not one of key, namespace"),
        ({"start": "2026-3-1"}, "start", "YYYY-MM-DD"),
        ({"end": "yesterday"}, "end", "YYYY-MM-DD"),
        ({"start": "2026-03-05", "end": "2026-03-04"}, "end", "before start"),
        ({"start": "2024-01-01", "end": "2026-03-04"}, "start", "at most 366 days"),
        ({"groupby": "key"}, "groupby", "unknown query parameter"),
    ],
)
def test_bad_queries_name_the_parameter(params: dict[str, str], param: str, says: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_query(query(**params), TODAY)
    assert info.value.status == 400 and info.value.param == param
    assert says in info.value.message


def test_table_has_groups_and_a_total_line() -> None:
    rows, totals = summary([event(), event(key="key:team-a/bob")], ["key", "route"])
    text = render_table(
        {
            "namespace": "team-a",
            "start": "2026-03-01",
            "end": "2026-03-01",
            "group_by": ["key", "route"],
            "data": rows,
            "totals": totals,
        }
    )
    lines = text.splitlines()
    assert lines[0] == "usage of namespace team-a from 2026-03-01 to 2026-03-01 (UTC)"
    assert lines[1].split() == [
        "KEY",
        "ROUTE",
        "REQUESTS",
        "INPUT",
        "TOKENS",
        "OUTPUT",
        "TOKENS",
        "COST",
        "USD",
        "CACHE",
        "HITS",
        "ERRORS",
    ]
    assert lines[2].split() == [
        "key:team-a/alice",
        "team-a/chat",
        "1",
        "10",
        "5",
        "0.000002",
        "0",
        "0",
    ]
    assert lines[-1].split() == ["TOTAL", "2", "20", "10", "0.000003", "0", "0"]
