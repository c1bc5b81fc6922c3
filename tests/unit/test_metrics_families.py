"""The gateway's metric families (plain dicts, collected at scrape time) expose exactly what
prometheus_client's own Counter and Histogram would for the same measurements."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kanal.gateway.telemetry._metrics import _Families, _Family

pytestmark = pytest.mark.unit

BOUNDS = (0.01, 0.1, 1.0, 2.5, 4194304)  # the last one is written 4.194304e+06


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # prometheus_client's own timestamps
    }


def _ours(kind: str, name: str) -> tuple[_Family, CollectorRegistry]:
    family = _Family(None, kind, name, name, "s", "help", ("route", "status"), BOUNDS)  # type: ignore[arg-type]
    families = _Families()
    families.families.append(family)
    registry = CollectorRegistry()
    registry.register(families)
    return family, registry


def test_histogram_matches_prometheus_client() -> None:
    reference = CollectorRegistry()
    theirs = Histogram("x_seconds", "help", ("route", "status"), registry=reference, buckets=BOUNDS)
    ours, registry = _ours("histogram", "x_seconds")
    observations = [
        (0.0, "a", "2xx"),
        (0.01, "a", "2xx"),  # on a bound: counted in that bucket (le)
        (0.010001, "a", "2xx"),
        (0.7, "a", "5xx"),
        (3.0, "b", "2xx"),
        (5_000_000.0, "b", "2xx"),  # above the last bound: +Inf only
    ]
    for value, *labels in observations:
        theirs.labels(*labels).observe(value)
        ours.observe(value, *labels)
    assert _samples(registry) == _samples(reference)
    assert len(_samples(registry)) == 3 * (len(BOUNDS) + 3)  # 3 series: buckets, +Inf, count, sum


def test_counter_matches_prometheus_client() -> None:
    reference = CollectorRegistry()
    theirs = Counter("x_requests", "help", ("route", "status"), registry=reference)
    ours, registry = _ours("counter", "x_requests")
    for value, *labels in [(1, "a", "2xx"), (1, "a", "2xx"), (0.25, "b", "4xx")]:
        theirs.labels(*labels).inc(value)
        ours.add(value, *labels)
    assert _samples(registry) == _samples(reference)
    assert ("x_requests_total", (("route", "a"), ("status", "2xx")), 2.0) in _samples(registry)
