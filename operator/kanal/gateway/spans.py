"""Span helpers for the request path (router, service, upstream sessions).

Only used when tracing is on: callers hold ``tracer: Tracer | None`` and check ``is None``
before touching anything here, so with tracing off no OpenTelemetry call is made per request.
(The tracing sink itself, which opens and closes the request span, is
``kanal.gateway.telemetry._tracing``; this module stays outside that package because the
router imports it and the telemetry package imports the router.)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "W3C",
    "Span",
    "SpanKind",
    "Tracer",
    "current_span",
    "error_type",
    "genai_operation",
    "genai_provider",
    "mark_error",
    "recording",
    "shutdown_within",
    "traced",
]

W3C = TraceContextTextMapPropagator()
"""``traceparent``/``tracestate``: what callers send and upstreams receive."""

T = TypeVar("T")
ERROR_TYPE = "error.type"

_PROVIDER_NAME = {"gemini": "gcp.gemini", "azure-openai": "azure.ai.openai"}
_OPERATION_NAME = {"completion": "text_completion"}


def genai_provider(provider: str) -> str:
    """kanal's provider name -> ``gen_ai.provider.name`` (the GenAI semantic conventions'
    well-known values; openai and anthropic are the same, openai-compatible and mock stay)."""
    return _PROVIDER_NAME.get(provider, provider)


def genai_operation(operation: str) -> str:
    """chat, completion, embeddings -> ``gen_ai.operation.name`` (chat, text_completion,
    embeddings)."""
    return _OPERATION_NAME.get(operation, operation)


def error_type(exc: BaseException) -> str:
    """A low-cardinality name for a failure: the gateway's error code, the upstream failure
    kind, or the exception's class."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code  # GatewayError
    kind = getattr(exc, "kind", None)
    if kind is not None and isinstance(getattr(kind, "value", None), str):
        return str(kind.value)  # UpstreamError: 5xx, timeout, rate-limited, ...
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return str(status)
    return type(exc).__qualname__


def recording(tracer: Tracer | None) -> Tracer | None:
    """``tracer`` when tracing is on and the current request is traced; None when tracing
    is off or the request was sampled out (its children would be sampled out too: no child
    spans then; upstreams still get the request's own ``traceparent``, with its
    not-sampled flag)."""
    if tracer is None:
        return None
    return tracer if trace.get_current_span().is_recording() else None


def shutdown_within(stop: Callable[[], object], seconds: float) -> Awaitable[bool]:
    """Run a blocking ``shutdown`` (a flush that may retry against an unreachable
    collector) in a daemon thread; wait at most ``seconds`` for it, so stopping the gateway
    is never held up by telemetry."""
    done = threading.Event()

    def run() -> None:
        try:
            stop()
        finally:
            done.set()

    threading.Thread(target=run, name="kanal-otel-shutdown", daemon=True).start()
    return asyncio.get_running_loop().run_in_executor(None, done.wait, seconds)


def mark_error(span: Span, kind: str) -> None:
    """The span failed: status ERROR and ``error.type``."""
    span.set_status(StatusCode.ERROR, kind)
    span.set_attribute(ERROR_TYPE, kind)


@contextlib.contextmanager
def current_span(
    tracer: Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """A child of the current span, current itself inside the block (so upstream requests
    made in it carry it as their parent); an exception marks it failed with ``error.type``."""
    span = tracer.start_span(name, kind=kind, attributes=attributes)
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        mark_error(span, error_type(exc))
        raise
    finally:
        context.detach(token)
        span.end()


async def traced(
    tracer: Tracer, name: str, work: Awaitable[T], attributes: dict[str, Any] | None = None
) -> T:
    """Await ``work`` inside a span of its own."""
    with current_span(tracer, name, attributes=attributes):
        return await work
