"""The request log: one JSON line per request on the ``kanal.access`` logger.

Fields (absent values are ``null``): ``time`` (arrival, UTC ISO 8601), ``request_id``,
``trace_id``/``span_id`` (when tracing is on), ``protocol``, ``operation``, ``stream``,
``namespace`` (the caller's tenant), ``key`` (the caller's id: ``key:<ns>/<Secret name>``,
``sa:<ns>/<name>`` — never the key), ``route``, ``backend``, ``model`` (upstream),
``status``, ``outcome``, ``error_code``, ``attempts``, ``input_tokens``,
``output_tokens``, ``usage_source``, ``cost_usd``, ``latency_ms``, ``ttft_ms``,
``overhead_ms`` (gateway time: total minus upstream), ``cached``, ``session`` (a short
SHA-256 of the X-Session-Id, to correlate turns without printing the caller's id).

Never in it: credentials of any kind (the Authorization header, API keys, provider keys
are not fields of the record), error messages (an upstream's may quote part of a key), or
— unless the route sets ``spec.logging.content`` — prompts and answers. With it, the line
also has ``prompt`` (the messages / prompt / input as sent upstream: after guardrails
redaction, with the conversation context) and ``answer`` (the answer text), each cut at
``CONTENT_MAX_CHARS``; requests refused by guardrails never log their input.

The sink calls the logger synchronously; ``configure_logging`` (``kanal up``,
``kanal gateway``) puts a batching handler behind it: lines pile up in memory and a
background thread writes them every 0.1 s, so a slow stderr never stalls the event loop
(lines beyond the bound are dropped, counted, and the count is logged).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

from kanal.gateway.telemetry._record import RequestRecord

if TYPE_CHECKING:
    from kanal.gateway.runtime import Runtime

ACCESS_LOGGER = "kanal.access"
CONTENT_MAX_CHARS = 32_768
"""Longest prompt or answer text logged (content logging only); longer is cut with a note."""
_GUARDRAIL_REFUSALS = frozenset({"blocked_by_guardrails", "input_too_long"})
_INPUT = {"chat": "messages", "completion": "prompt", "embeddings": "input"}


def _iso(timestamp: float) -> str:
    """UTC, ISO 8601 with milliseconds (a third of datetime's cost: this runs per request)."""
    seconds = int(timestamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((timestamp - seconds) * 1000):03d}Z"
    )


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


def _trace_ids(span: Any) -> tuple[str | None, str | None]:
    if span is None:
        return None, None
    try:
        context = span.get_span_context()
    except Exception:
        return None, None
    if not getattr(context, "is_valid", False):
        return None, None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _cut(text: str) -> str:
    if len(text) <= CONTENT_MAX_CHARS:
        return text
    return text[:CONTENT_MAX_CHARS] + f"… [{len(text) - CONTENT_MAX_CHARS} more characters]"


def access_fields(record: RequestRecord, runtime: Runtime) -> dict[str, Any]:
    """The log line's fields for a finished request."""
    call = record.call
    usage = record.usage
    caller = record.caller
    trace_id, span_id = _trace_ids(record.span)
    session = call.session_id if call is not None else None
    fields: dict[str, Any] = {
        "time": _iso(record.started_at),
        "request_id": record.request_id,
        "trace_id": trace_id,
        "span_id": span_id,
        "protocol": record.protocol,
        "operation": record.operation,
        "stream": record.stream,
        "namespace": record.namespace,
        "key": caller.id if caller is not None else None,
        "route": record.route_id,
        "backend": record.backend,
        "model": record.model,
        "status": record.status,
        "outcome": record.outcome_name,
        "error_code": record.error_code,
        "attempts": record.trace.attempts,
        "input_tokens": usage.prompt_tokens if usage is not None else None,
        "output_tokens": usage.completion_tokens if usage is not None else None,
        "usage_source": record.usage_source,
        "cost_usd": round(record.cost_usd(runtime.snapshot), 9),
        "latency_ms": _ms(record.duration),
        "ttft_ms": _ms(record.ttft),
        "overhead_ms": _ms(record.overhead),
        "cached": record.cached,
        "session": hashlib.sha256(session.encode()).hexdigest()[:16] if session else None,
    }
    if call is not None and call.route.log_content:
        if record.error_code in _GUARDRAIL_REFUSALS:
            fields["prompt"] = None
            fields["content_omitted"] = "refused by guardrails"
        else:
            prompt = call.body.get(_INPUT.get(call.op, "messages"))
            text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
            fields["prompt"] = _cut(text)
            outcome = call.outcome
            fields["answer"] = _cut(outcome.text) if outcome is not None else None
    return fields


class AccessLogSink:
    """Writes the request log line of every finished request."""

    def __init__(self, runtime: Runtime, logger: logging.Logger | None = None) -> None:
        self.runtime = runtime
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    def start(self, record: RequestRecord, carrier: Mapping[str, str]) -> None:
        return None

    def finish(self, record: RequestRecord) -> None:
        batching = _access_handler
        if batching is not None and self.log.handlers == [batching]:
            # the CLI's batching handler: straight to it, without a LogRecord per request
            batching.push(orjson.dumps(access_fields(record, self.runtime)).decode())
            return
        if not self.log.isEnabledFor(logging.INFO):
            return
        fields = access_fields(record, self.runtime)
        self.log.info(orjson.dumps(fields).decode(), extra={"kanal_access": fields})

    async def close(self) -> None:
        return None


# -- logging setup for the CLI --------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: request log lines as they are, other records as
    ``{time, level, logger, message[, exception]}``."""

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "kanal_access", None)
        if isinstance(access, dict):
            return orjson.dumps(access).decode()
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class _BatchingHandler(logging.Handler):
    """Request log lines, written in batches by a background thread.

    ``emit`` only appends the preformatted line to a list (the event loop never waits for
    stderr); the thread wakes every ``interval`` seconds and writes what piled up with one
    write and one flush. A handoff per line (QueueHandler + QueueListener) cost the gateway
    a third of its throughput in bench/overhead.py: every line woke the thread, which then
    competed for the GIL. Beyond ``max_pending`` lines (stderr stuck) lines are dropped and
    counted; the count is written with the next batch that gets through."""

    def __init__(self, stream: TextIO, max_pending: int, interval: float = 0.1) -> None:
        super().__init__()
        self.stream = stream
        self.max_pending = max_pending
        self.interval = interval
        self.dropped = 0
        self._pending: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kanal-access-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg
        self.push(message if isinstance(message, str) and not record.args else self.format(record))

    def push(self, line: str) -> None:
        """Queue one preformatted line (no newline)."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append(line)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._flush_pending()
        self._flush_pending()

    def _flush_pending(self) -> None:
        lines, self._pending = self._pending, []  # one assignment: atomic under the GIL
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            lines.append(
                orjson.dumps(
                    {"logger": ACCESS_LOGGER, "level": "warning", "dropped_lines": dropped}
                ).decode()
            )
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:  # a closed or broken stderr: nothing better to do than lose them
            pass

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        super().close()


_access_handler: _BatchingHandler | None = None


def configure_logging(
    level: int,
    log_format: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
    max_pending: int = 10_000,
) -> None:
    """Logging of ``kanal up`` and ``kanal gateway``: everything at ``level`` in ``log_format``
    on stderr, and the request log (``kanal.access``) at INFO as JSON lines whatever
    ``level`` is, written in batches by a background thread."""
    global _access_handler
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    stop_logging()
    _access_handler = _BatchingHandler(out, max_pending)
    _access_handler.setFormatter(JsonFormatter())
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = [_access_handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Write the request log lines still pending, then stop its thread."""
    global _access_handler
    if _access_handler is not None:
        _access_handler.close()
        logging.getLogger(ACCESS_LOGGER).removeHandler(_access_handler)
        _access_handler = None
