"""RequestRecord's derived fields: what every sink (metrics, usage, log, trace) reads."""

from __future__ import annotations

import pytest

from kanal.gateway.errors import GatewayError
from kanal.gateway.telemetry import RequestRecord
from kanal.snapshot import Snapshot

pytestmark = pytest.mark.unit


def _record(**fields: object) -> RequestRecord:
    record = RequestRecord("http", "chat", "req-1")
    record.started = 100.0
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def test_overhead_of_a_unary_call_is_total_minus_upstream() -> None:
    record = _record(ended=101.0)
    record.trace.upstream_seconds = 0.75
    assert record.overhead == pytest.approx(0.25)
    assert record.ttft == pytest.approx(1.0)


def test_overhead_of_a_stream_ends_at_the_first_chunk() -> None:
    # relaying a 30 s answer is the upstream's pace, not gateway overhead
    record = _record(stream=True, first_chunk=100.5, ended=130.0)
    record.trace.upstream_seconds = 0.4
    assert record.overhead == pytest.approx(0.1)
    assert record.ttft == pytest.approx(0.5)
    assert record.duration == pytest.approx(30.0)


def test_status_and_outcome_follow_where_the_error_happened() -> None:
    err = GatewayError(502, "upstream failed", code="upstream_error")
    before = _record(error=err, ended=101.0)
    assert (before.status, before.status_class, before.outcome_name) == (502, "5xx", "error")
    assert before.ttft is None
    mid = _record(error=err, in_stream_error=True, stream=True, first_chunk=100.1, ended=101.0)
    assert (mid.status, mid.outcome_name, mid.error_code) == (200, "stream_error", "upstream_error")
    gone = _record(disconnected=True, stream=True, first_chunk=100.1, ended=101.0)
    assert gone.outcome_name == "client_disconnected"


def test_a_record_without_an_answer_costs_nothing() -> None:
    record = _record(ended=101.0)
    assert record.usage is None and record.usage_source == "none"
    assert record.cost_usd(Snapshot()) == 0.0
