"""One record per request: what the protocol layer saw plus what the pipeline produced.

The protocol layers (HTTP, gRPC) open a record when a request arrives and close it when the
answer (the whole stream, for streams) is gone or the caller left. In between the service
fills ``call`` (and through it ``call.outcome``) and ``trace``. Sinks (metrics, usage events,
the request log, traces) read it once, at the end; nothing on the request path waits for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kanal.gateway.router import Trace

if TYPE_CHECKING:
    from kanal.gateway.errors import GatewayError
    from kanal.gateway.policy.base import Call, Caller, Usage
    from kanal.snapshot import Snapshot

Protocol = Literal["http", "grpc"]
OutcomeName = Literal["ok", "error", "stream_error", "client_disconnected"]
UsageSource = Literal["provider", "estimated", "none"]


@dataclass(slots=True)
class RequestRecord:
    protocol: Protocol
    operation: str
    """chat, completion or embeddings."""
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    """perf_counter() at arrival; durations are measured from it."""
    started_at: float = field(default_factory=time.time)
    """Wall-clock arrival (epoch seconds), for events and logs."""
    trace: Trace = field(default_factory=Trace)
    caller: Caller | None = None
    """Set once authentication succeeded."""
    call: Call | None = None
    """Set once the request was validated and routed (its ``outcome`` once it ran)."""
    stream: bool = False
    error: GatewayError | None = None
    """The error the caller got, as a status or (``in_stream``) as an in-stream event."""
    in_stream_error: bool = False
    """The error ended a stream that had already started (HTTP status was 200)."""
    disconnected: bool = False
    """The caller went away before the answer was complete."""
    first_chunk: float | None = None
    """perf_counter() when the first chunk of a stream was ready to send."""
    ended: float | None = None
    """perf_counter() at the end; set by Telemetry.finish."""
    span: Any = None
    """The request's tracing span (None when tracing is off)."""
    scratch: dict[str, Any] = field(default_factory=dict)
    """Per-sink scratch space (e.g. the context token of the request span)."""
    _cost: float | None = None
    """cost_usd once the request ended (several sinks ask for it)."""

    # -- derived, read by the sinks ------------------------------------------------------

    @property
    def duration(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def ttft(self) -> float | None:
        """Seconds to the first chunk (streams) or to the whole answer (unary, successful)."""
        if self.first_chunk is not None:
            return self.first_chunk - self.started
        if self.outcome_name == "ok" and not self.stream:
            return self.duration
        return None

    @property
    def overhead(self) -> float:
        """Gateway time: until the answer (a stream's first chunk: relaying the rest is the
        upstream's pace, not ours) minus the upstream's time, retries included."""
        end = self.first_chunk if self.first_chunk is not None else self.ended
        elapsed = (end if end is not None else time.perf_counter()) - self.started
        return max(0.0, elapsed - self.trace.upstream_seconds)

    @property
    def status(self) -> int:
        """The HTTP status the caller got (200 for streams that started, even if cut)."""
        if self.error is not None and not self.in_stream_error:
            return self.error.status
        return 200

    @property
    def status_class(self) -> str:
        return f"{self.status // 100}xx"

    @property
    def outcome_name(self) -> OutcomeName:
        if self.disconnected:
            return "client_disconnected"
        if self.error is not None:
            return "stream_error" if self.in_stream_error else "error"
        return "ok"

    @property
    def error_code(self) -> str | None:
        return self.error.code if self.error is not None else None

    @property
    def namespace(self) -> str | None:
        """The caller's tenant."""
        return self.caller.tenant if self.caller is not None else None

    @property
    def route_id(self) -> str | None:
        return self.call.route.id if self.call is not None else None

    @property
    def backend(self) -> str | None:
        return self.trace.backend or None

    @property
    def model(self) -> str | None:
        """The upstream model that answered."""
        return self.trace.model or None

    @property
    def cached(self) -> bool:
        outcome = self.call.outcome if self.call is not None else None
        return bool(outcome is not None and outcome.cached)

    @property
    def usage(self) -> Usage | None:
        outcome = self.call.outcome if self.call is not None else None
        return outcome.usage if outcome is not None else None

    @property
    def usage_source(self) -> UsageSource:
        usage = self.usage
        return usage.source if usage is not None else "none"

    def cost_usd(self, snapshot: Snapshot) -> float:
        """What the answer cost at the prices of the backend and model that produced it;
        cached answers and answers without usage cost nothing."""
        if self._cost is not None:
            return self._cost
        cost = self._price(snapshot)
        if self.ended is not None:  # final: the sinks read it one after the other
            self._cost = cost
        return cost

    def _price(self, snapshot: Snapshot) -> float:
        usage = self.usage
        if usage is None or self.cached or not self.backend or not self.model:
            return 0.0
        backend = snapshot.backends.get(self.backend)
        info = backend.models.get(self.model) if backend is not None else None
        if info is None:
            return 0.0
        return (
            usage.prompt_tokens * info.usd_per_input_token
            + usage.completion_tokens * info.usd_per_output_token
        )
