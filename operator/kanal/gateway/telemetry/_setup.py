"""The sinks a gateway process runs, from its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kanal.gateway.telemetry._accesslog import AccessLogSink
from kanal.gateway.telemetry._hub import Sink
from kanal.gateway.telemetry._metrics import build_metrics
from kanal.gateway.telemetry._tracing import build_tracing
from kanal.gateway.telemetry._usage import UsageSink
from kanal.gateway.telemetry._usage import store_for as usage_store_for

if TYPE_CHECKING:
    from kanal.gateway.runtime import Runtime
    from kanal.gateway.stores import Stores


def build_sinks(runtime: Runtime, stores: Stores) -> list[Sink]:
    """In order: ``start`` runs first to last, ``finish`` last to first (so the tracing sink,
    first, opens the request span before the others start and ends it after they finish)."""
    sinks: list[Sink] = []
    # tracing (first), metrics, usage events, request log
    tracing = build_tracing(runtime)  # None when OTEL_TRACES_EXPORTER=none: no cost at all
    if tracing is not None:
        sinks.append(tracing)
    sinks.append(build_metrics(runtime))
    sinks.append(
        UsageSink(
            runtime,
            usage_store_for(runtime.settings, stores.redis),
            runtime.settings.usage_queue_size,
        )
    )
    sinks.append(AccessLogSink(runtime))  # last: finishes first, while the span is open
    return sinks
