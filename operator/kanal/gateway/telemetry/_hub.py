"""Where records go when a request ends: the sinks (metrics, usage events, logs, traces)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol as TypingProtocol
from typing import TypeVar

from kanal.gateway.telemetry._record import Protocol, RequestRecord

log = logging.getLogger("kanal.gateway.telemetry")
S = TypeVar("S")


class Sink(TypingProtocol):
    """Receives every finished request. ``start`` may hook the request's beginning (tracing
    opens its span there); ``finish`` must not block: enqueue, never await I/O."""

    def start(self, record: RequestRecord, carrier: Mapping[str, str]) -> None: ...

    def finish(self, record: RequestRecord) -> None: ...

    async def close(self) -> None: ...


class Telemetry:
    """The sinks of one gateway process, in order."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or ())

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def find(self, kind: type[S]) -> S | None:
        """The sink of that class, None when this gateway runs none."""
        return next((s for s in self.sinks if isinstance(s, kind)), None)

    def begin(
        self,
        protocol: Protocol,
        operation: str,
        request_id: str,
        carrier: Mapping[str, str] | None = None,
    ) -> RequestRecord:
        """A new record; ``carrier`` holds the caller's headers or gRPC metadata (for the
        W3C trace context)."""
        record = RequestRecord(protocol, operation, request_id)
        for sink in self.sinks:
            try:
                sink.start(record, carrier or {})
            except Exception:  # telemetry trouble never fails a request
                log.exception("telemetry sink %s failed at start", type(sink).__name__)
        return record

    def finish(self, record: RequestRecord) -> None:
        if record.ended is not None:
            return  # finished twice (a protocol layer's belt and braces): once only
        record.ended = time.perf_counter()
        for sink in reversed(self.sinks):
            try:
                sink.finish(record)
            except Exception:
                log.exception("telemetry sink %s failed", type(sink).__name__)

    async def close(self) -> None:
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("telemetry sink %s failed to close", type(sink).__name__)
