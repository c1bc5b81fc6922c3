"""Metrics: counted from each finished request's record, served at ``/metrics``.

Measurements go into plain dicts (see ``_Family``); Prometheus text is made from them at
scrape time by a ``prometheus_client`` registry of this gateway's own (not the process-wide
default, so several gateways in one process, as in the tests, do not mix). With
``OTEL_METRICS_EXPORTER=otlp`` every measurement is also recorded on OpenTelemetry
instruments of a MeterProvider owned by the gateway and pushed by OTLP. Why not
OpenTelemetry's own Prometheus exporter as the one path: recording on the OTel SDK costs
about 10 us per measurement here (attribute sets hashed on every call), and a request makes
about ten measurements; so OTel is paid for only when OTLP export is asked for.

Labels are bounded by construction: route ids, backend ids and namespaces come from the
routing snapshot and the authenticated caller, status classes and error codes from the
gateway's own code, never from what a caller sent (an unknown model has route ``""``).
Key ids, users, request ids and model strings are never labels.

Names follow the OpenTelemetry GenAI semantic conventions where they have one
(``gen_ai.server.request.duration`` -> ``gen_ai_server_request_duration_seconds``, ...);
the rest are ``kanal_*``.
"""

from __future__ import annotations

import asyncio
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry.metrics import Observation
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kanal.gateway.spans import shutdown_within
from kanal.gateway.telemetry._record import RequestRecord

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.metrics import CallbackOptions, Meter
    from opentelemetry.sdk.metrics import MeterProvider

    from kanal.gateway.runtime import Runtime
    from kanal.gateway.settings import GatewaySettings
    from kanal.gateway.telemetry._hub import Telemetry

Kind = Literal["counter", "histogram"]

# bucket boundaries recommended by the GenAI semantic conventions
_DURATION = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_OVERHEAD = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_MESSAGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_CODE = re.compile(r"^[a-z0-9_]{1,64}$")
LIMIT_CODES = frozenset(
    {
        "rate_limit_exceeded",  # 429, limits
        "exceeds_rate_limit",  # 400, limits: can never fit
        "limits_unavailable",  # 503, limits: Redis down, fail closed
        "budget_exceeded",  # 429, budget
        "exceeds_budget",  # 400, budget: can never fit
        "budget_unavailable",  # 503, budget: Redis down, fail closed
    }
)
"""Error codes of the limits and budget policies: counted as limit rejections."""
_CACHE_RESULTS = frozenset({"hit", "miss", "bypass"})
_go_float: Callable[[float], str] = floatToGoString
"""Bucket bounds written as prometheus_client writes them (Go's float format)."""


def _code(code: str | None) -> str:
    """Error codes are the gateway's own; anything else is folded, never a new label."""
    if not code:
        return ""
    return code if _CODE.match(code) else "other"


class _Family:
    """One metric: values kept in plain dicts keyed by label values (the event loop is the
    only writer, and ``/metrics`` is served on the same loop: no locks), turned into a
    Prometheus family at scrape time; and, when OTLP export is on, the OpenTelemetry
    instrument of the same measurement. A prometheus_client Counter/Histogram child costs a
    lock and an object per call: about 11 us per request for the ~10 measurements made,
    against about 6 us here (``MetricsSink.finish``, measured in-process)."""

    __slots__ = ("bounds", "help", "kind", "labels", "name", "otel", "values")

    def __init__(
        self,
        meter: Meter | None,
        kind: Kind,
        prom_name: str,
        otel_name: str,
        unit: str,
        help_text: str,
        labels: Sequence[str],
        buckets: Sequence[float] = (),
    ) -> None:
        self.kind = kind
        self.name = prom_name
        self.help = help_text
        self.labels = tuple(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self.values: dict[tuple[str, ...], list[float]] = {}
        """counter: [total]; histogram: [count per bucket..., count above the last, sum]."""
        self.otel: Any = None
        if meter is not None:
            if kind == "counter":
                self.otel = meter.create_counter(otel_name, unit=unit, description=help_text)
            else:
                self.otel = meter.create_histogram(
                    otel_name,
                    unit=unit,
                    description=help_text,
                    explicit_bucket_boundaries_advisory=list(buckets),
                )

    def add(self, value: float, *values: str) -> None:
        cell = self.values.get(values)
        if cell is None:
            cell = self.values[values] = [0.0]
        cell[0] += value
        if self.otel is not None:
            self.otel.add(value, dict(zip(self.labels, values, strict=True)))

    def observe(self, value: float, *values: str) -> None:
        cell = self.values.get(values)
        if cell is None:
            cell = self.values[values] = [0.0] * (len(self.bounds) + 2)
        cell[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound >= value
        cell[-1] += value
        if self.otel is not None:
            self.otel.record(value, dict(zip(self.labels, values, strict=True)))

    def metric(self) -> Metric:
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.help, labels=self.labels)
            for values, cell in self.values.items():
                counter.add_metric(values, cell[0])
            return counter
        histogram = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        les = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for values, cell in self.values.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(les, cell[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            histogram.add_metric(values, buckets, sum_value=cell[-1])
        return histogram


class _Families(Collector):
    """The families of one gateway, collected at scrape time."""

    def __init__(self) -> None:
        self.families: list[_Family] = []

    def collect(self) -> Iterable[Metric]:
        return [family.metric() for family in self.families]


class _BackendHealth(Collector):
    """Read at scrape time from the live backend state: nothing on the request path."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def rows(self) -> Iterator[tuple[str, float, int, int]]:
        """(backend, cooling down 0/1, consecutive failures, cooldowns so far)."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # an OTLP export thread: the loop's clock is monotonic too
            now = time.monotonic()
        for backend_id, state in list(self.runtime.backends.items()):
            cooling = 1.0 if state.cooldown_until > now else 0.0
            yield backend_id, cooling, state.failures, state.cooldowns

    def collect(self) -> Iterable[Metric]:
        cooldown = GaugeMetricFamily(
            "kanal_backend_cooldown",
            "1 while the backend sits out after failures or a 429, else 0",
            labels=["backend"],
        )
        failures = GaugeMetricFamily(
            "kanal_backend_consecutive_failures",
            "Consecutive failed attempts (reset by a success or by going into cooldown)",
            labels=["backend"],
        )
        cooldowns = CounterMetricFamily(
            "kanal_backend_cooldowns",
            "Times the backend went into cooldown (since its configuration last changed)",
            labels=["backend"],
        )
        for backend_id, cooling, failed, count in self.rows():
            cooldown.add_metric([backend_id], cooling)
            failures.add_metric([backend_id], failed)
            cooldowns.add_metric([backend_id], count)
        return [cooldown, failures, cooldowns]

    def observe_otel(self, meter: Meter) -> None:
        def cooling(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(c, {"backend": b}) for b, c, _, _ in self.rows()]

        def failing(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(f, {"backend": b}) for b, _, f, _ in self.rows()]

        def cooled(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"backend": b}) for b, _, _, n in self.rows()]

        meter.create_observable_gauge("kanal.backend.cooldown", [cooling])
        meter.create_observable_gauge("kanal.backend.consecutive_failures", [failing])
        meter.create_observable_counter("kanal.backend.cooldowns", [cooled])


class MetricsSink:
    """Counts every finished request (``finish`` only records in memory)."""

    def __init__(self, runtime: Runtime, meter_provider: MeterProvider | None = None) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=True)
        self.meter_provider = meter_provider
        meter = meter_provider.get_meter("kanal.gateway") if meter_provider else None
        families = _Families()

        def family(
            kind: Kind,
            prom: str,
            otel: str,
            unit: str,
            help_text: str,
            labels: Sequence[str],
            buckets: Sequence[float] = (),
        ) -> _Family:
            made = _Family(meter, kind, prom, otel, unit, help_text, labels, buckets)
            families.families.append(made)
            return made

        request = ("protocol", "operation", "route", "namespace", "backend")
        self.requests = family(
            "counter",
            "kanal_requests",
            "kanal.requests",
            "{request}",
            "Requests by outcome (ok, error, stream_error, client_disconnected)",
            (*request, "status_class", "outcome"),
        )
        self.duration = family(
            "histogram",
            "gen_ai_server_request_duration_seconds",
            "gen_ai.server.request.duration",
            "s",
            "Whole request at the gateway: arrival to the last byte (streams) or the answer",
            (*request, "status_class"),
            _DURATION,
        )
        self.ttft = family(
            "histogram",
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token",
            "s",
            "Arrival to the first chunk (streams) or to the whole answer (unary), successes",
            (*request, "stream"),
            _TTFT,
        )
        self.upstream = family(
            "histogram",
            "gen_ai_client_operation_duration_seconds",
            "gen_ai.client.operation.duration",
            "s",
            "Each upstream attempt, the gateway being the provider's client (to the first "
            "chunk for streams); outcome ok or the failure kind",
            ("operation", "route", "backend", "outcome"),
            _DURATION,
        )
        self.tokens = family(
            "histogram",
            "gen_ai_client_token_usage",
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens per upstream answer (not for cached answers); usage_source provider or "
            "estimated",
            ("operation", "route", "namespace", "backend", "token_type", "usage_source"),
            _TOKENS,
        )
        self.cost = family(
            "counter",
            "kanal_cost_usd",
            "kanal.cost",
            "USD",
            "What upstream answers cost at the backends' model prices",
            ("route", "namespace", "backend"),
        )
        self.errors = family(
            "counter",
            "kanal_errors",
            "kanal.errors",
            "{error}",
            "Failed requests by status class and the gateway's error code",
            ("protocol", "operation", "route", "namespace", "status_class", "error_code"),
        )
        self.limits = family(
            "counter",
            "kanal_limit_rejections",
            "kanal.limit.rejections",
            "{request}",
            "Requests refused by rate limits or budgets, by error code",
            ("route", "namespace", "error_code"),
        )
        self.cache = family(
            "counter",
            "kanal_cache_lookups",
            "kanal.cache.lookups",
            "{request}",
            "Response cache lookups by result (hit, miss, bypass)",
            ("route", "namespace", "result"),
        )
        self.attempts = family(
            "counter",
            "kanal_upstream_attempts",
            "kanal.upstream.attempts",
            "{attempt}",
            "Upstream attempts by outcome (ok or the failure kind); retries and fallbacks "
            "each count",
            ("backend", "outcome"),
        )
        self.overhead = family(
            "histogram",
            "kanal_gateway_overhead_seconds",
            "kanal.gateway.overhead",
            "s",
            "Gateway time: to the answer (streams: to the first chunk) minus upstream time",
            ("protocol", "operation", "route"),
            _OVERHEAD,
        )
        self.context_messages = family(
            "histogram",
            "kanal_context_loaded_messages",
            "kanal.context.loaded_messages",
            "{message}",
            "Stored messages of the session put into the prompt (routes with context)",
            ("route", "namespace"),
            _MESSAGES,
        )
        self.context_tokens = family(
            "histogram",
            "kanal_context_prompt_tokens",
            "kanal.context.prompt_tokens",
            "{token}",
            "Estimated prompt tokens after the session's history was put in",
            ("route", "namespace"),
            _TOKENS,
        )
        self.registry.register(families)
        health = _BackendHealth(runtime)
        self.registry.register(health)
        if meter is not None:
            health.observe_otel(meter)

    def start(self, record: RequestRecord, carrier: Mapping[str, str]) -> None:
        pass

    def finish(self, record: RequestRecord) -> None:
        protocol, op = record.protocol, record.operation
        route = record.route_id or ""
        namespace = record.namespace or ""
        backend = record.backend or ""
        status_class = record.status_class
        labels = (protocol, op, route, namespace, backend)
        self.requests.add(1, *labels, status_class, record.outcome_name)
        self.duration.observe(record.duration, *labels, status_class)
        ttft = record.ttft
        if ttft is not None:
            stream = "true" if record.stream else "false"
            self.ttft.observe(ttft, *labels, stream)
        for attempt in record.trace.attempt_log:
            self.upstream.observe(attempt.seconds, op, route, attempt.backend, attempt.outcome)
            self.attempts.add(1, attempt.backend, attempt.outcome)
        error = record.error
        if error is not None:
            code = _code(error.code)
            self.errors.add(1, protocol, op, route, namespace, status_class, code)
            if code in LIMIT_CODES:
                self.limits.add(1, route, namespace, code)
        call = record.call
        if call is None:
            return
        cache = call.headers.get("x-kanal-cache")
        if cache in _CACHE_RESULTS:
            self.cache.add(1, route, namespace, cache)
        usage = record.usage
        if usage is not None and not record.cached and backend:
            source = usage.source
            self.tokens.observe(usage.prompt_tokens, op, route, namespace, backend, "input", source)
            self.tokens.observe(
                usage.completion_tokens, op, route, namespace, backend, "output", source
            )
            cost = record.cost_usd(self.runtime.snapshot)
            if cost:
                self.cost.add(cost, route, namespace, backend)
        if record.trace.attempts:
            self.overhead.observe(record.overhead, protocol, op, route)
        context = _context_size(call.state.get("context"))
        if context is not None:
            self.context_messages.observe(context[0], route, namespace)
            self.context_tokens.observe(context[1], route, namespace)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def close(self) -> None:
        if self.meter_provider is not None:  # the last export: off the loop, never for long
            await shutdown_within(self.meter_provider.shutdown, 5.0)


def _context_size(turn: Any) -> tuple[int, int] | None:
    """(history messages, prompt tokens) from the context policy's state of a call."""
    prompt = getattr(turn, "prompt", None)
    messages = getattr(prompt, "history_messages", None)
    tokens = getattr(prompt, "tokens", None)
    if isinstance(messages, int) and isinstance(tokens, int):
        return messages, tokens
    return None


def meter_provider(settings: GatewaySettings) -> MeterProvider | None:
    """An OTLP-pushing MeterProvider when ``OTEL_METRICS_EXPORTER=otlp``, else None."""
    if settings.metrics_exporter != "otlp":
        return None
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    exporter = OTLPMetricExporter(endpoint=settings.otlp_url("metrics"))
    reader = PeriodicExportingMetricReader(exporter)
    return MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
    )


def build_metrics(runtime: Runtime) -> MetricsSink:
    return MetricsSink(runtime, meter_provider(runtime.settings))


def exposition(telemetry: Telemetry) -> tuple[bytes, str] | None:
    """``/metrics``: the Prometheus text of the gateway's metrics sink (None without one)."""
    sink = telemetry.find(MetricsSink)
    return (sink.exposition(), CONTENT_TYPE_LATEST) if sink is not None else None
