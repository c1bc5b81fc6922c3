"""Traces: a SERVER span per request, with the GenAI semantic conventions' attributes.

``start`` continues the caller's W3C trace context (``traceparent``/``tracestate`` from the
HTTP headers or gRPC metadata) and makes the request span current for the rest of the
request: HTTP handlers and gRPC methods run the whole request, stream included, in one task,
so the spans of routing, upstream attempts (CLIENT spans whose context goes upstream as
``traceparent``) and policies become its children. ``finish`` names it
``{gen_ai.operation.name} {gen_ai.request.model}``, sets the attributes and ends it.

With ``OTEL_TRACES_EXPORTER=none`` (the default) there is no tracer at all: no sink, and
``runtime.tracer is None`` keeps the router and the policy chain free of span calls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind

import kanal
from kanal.gateway.spans import (
    W3C,
    genai_operation,
    genai_provider,
    mark_error,
    shutdown_within,
)
from kanal.gateway.telemetry._record import RequestRecord

if TYPE_CHECKING:
    from kanal.gateway.runtime import Runtime
    from kanal.gateway.settings import GatewaySettings

log = logging.getLogger("kanal.gateway.telemetry")

_TOKEN = "tracing.token"
_REQUEST_PARAMS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
)


def tracer_provider(settings: GatewaySettings) -> tuple[TracerProvider | None, bool]:
    """The provider the settings ask for, and whether the gateway owns it (shuts it down).
    None when tracing is off."""
    if settings.tracer_provider is not None:
        return settings.tracer_provider, False
    if settings.traces_exporter == "none":
        return None, False
    exporter: SpanExporter
    if settings.traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_url("traces"))
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}))
    # batched: spans are exported from a background thread, never on the request path
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, True


class TracingSink:
    """Opens the request span at ``start`` and ends it at ``finish`` (first sink: it starts
    before and ends after the others)."""

    def __init__(self, provider: TracerProvider, runtime: Runtime, *, owned: bool) -> None:
        self.provider = provider
        self.owned = owned
        self.runtime = runtime
        self.tracer = provider.get_tracer("kanal.gateway", kanal.__version__)

    def start(self, record: RequestRecord, carrier: Mapping[str, str]) -> None:
        parent = W3C.extract(carrier) if carrier else None
        operation = genai_operation(record.operation)
        span = self.tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "kanal.protocol": record.protocol,
                "kanal.request_id": record.request_id,
            },
        )
        record.span = span
        record.scratch[_TOKEN] = context.attach(trace.set_span_in_context(span))

    def finish(self, record: RequestRecord) -> None:
        span = record.span
        if span is None:
            return
        try:
            if span.is_recording():  # a request sampled out has nothing to annotate
                self._annotate(span, record)
        finally:
            token = record.scratch.pop(_TOKEN, None)
            if token is not None:
                context.detach(token)
            span.end()

    def _annotate(self, span: Any, record: RequestRecord) -> None:
        call = record.call
        attributes: dict[str, Any] = {
            "kanal.outcome": record.outcome_name,
            "kanal.attempts": record.trace.attempts,
            "kanal.stream": record.stream,
            "kanal.cache_hit": record.cached,
        }
        if record.protocol == "http":
            attributes["http.response.status_code"] = record.status
        else:
            attributes["rpc.system"] = "grpc"
            attributes["kanal.status_code"] = record.status  # the HTTP equivalent
        if record.namespace:
            attributes["kanal.namespace"] = record.namespace
        if call is not None:
            span.update_name(f"{genai_operation(record.operation)} {call.route.model}")
            attributes["gen_ai.request.model"] = call.route.model
            attributes["kanal.route"] = call.route.id
            for key, name in _REQUEST_PARAMS:
                value = call.body.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attributes[name] = value
        backend = record.backend
        if backend:
            attributes["kanal.backend"] = backend
            config = self.runtime.snapshot.backends.get(backend)
            if config is not None:
                provider = genai_provider(config.provider)
                attributes["gen_ai.provider.name"] = provider
                attributes["gen_ai.system"] = provider
        if record.model:
            attributes["gen_ai.response.model"] = record.model
        usage = record.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            attributes["kanal.usage_source"] = usage.source
        outcome = call.outcome if call is not None else None
        if outcome is not None and outcome.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (outcome.finish_reason,)
        if record.first_chunk is not None:
            attributes["kanal.time_to_first_token"] = record.first_chunk - record.started
            wall = record.started_at + (record.first_chunk - record.started)
            span.add_event("gen_ai.first_chunk", timestamp=int(wall * 1e9))
        span.set_attributes(attributes)
        if record.error is not None:
            kind = record.error.code or str(record.error.status)
            mark_error(span, kind)
        elif record.disconnected:
            mark_error(span, "client_disconnected")

    async def close(self) -> None:
        if self.owned:  # flushes the batch: off the loop, and never for long
            await shutdown_within(self.provider.shutdown, 5.0)


def build_tracing(runtime: Runtime) -> TracingSink | None:
    """The tracing sink for the runtime's settings, or None (tracing off); sets
    ``runtime.tracer`` for the router, the policy chain and the upstream sessions."""
    provider, owned = tracer_provider(runtime.settings)
    if provider is None:
        return None
    sink = TracingSink(provider, runtime, owned=owned)
    runtime.tracer = sink.tracer
    return sink
